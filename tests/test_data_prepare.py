"""Preparation: tfds's official cifar10 builder from a local CIFAR-format archive, and the prepare CLI."""

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ib_attention_jax import data
from ib_attention_jax.data import prepare
from ib_attention_jax.data.recipes import RECIPES

HAS_TF = importlib.util.find_spec("tensorflow") is not None
NEEDS_TF = pytest.mark.skipif(
    not HAS_TF,
    reason="tfds's cifar10 builder reads its download with TensorFlow, "
    "which is not installed (optional: pip install tensorflow-cpu)",
)


def write_cifar10_archive(
    root, counts: dict[str, int], seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the extracted layout of cifar-10-binary.tar.gz (1 label byte + 3072 CHW bytes per record).

    Returns {file name: (images (n, 32, 32, 3) uint8, labels (n,))}.
    """
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in counts.items():
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())
        written[name] = (images, labels)
    return written


@NEEDS_TF
def test_official_cifar10_builder_prepared_offline_from_a_local_archive(tmp_path, monkeypatch):
    counts = {f"data_batch_{i}.bin": 3 for i in range(1, 6)} | {"test_batch.bin": 4}
    written = write_cifar10_archive(tmp_path / "extracted", counts)
    # As tfds's own builder tests do: the download manager hands over a local folder instead of downloading.
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(tmp_path / "extracted")
    )
    data_dir = str(tmp_path / "tfds")
    builder = prepare.prepare("cifar10", data_dir)
    assert builder.info.file_format.value == "array_record"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 15, "test": 4}

    train_images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    source = data.open_source("cifar10", "train", data_dir)
    for example in source:  # stored order is tfds's; the id names the archive record
        record_id = example["id"].decode() if isinstance(example["id"], bytes) else example["id"]
        index = int(record_id.removeprefix("train_"))
        np.testing.assert_array_equal(example["image"], train_images[index])
        assert example["label"] == train_labels[index]

    recipe = RECIPES["cifar10"]
    batches = list(
        data.make_eval_iterator("cifar10", batch_size=3, data_dir=data_dir, process_index=0, process_count=1)
    )
    assert [int(b["mask"].sum()) for b in batches] == [3, 1]
    test_images, test_labels = written["test_batch.bin"]
    got = sorted(
        zip(
            np.concatenate([b["label"][b["mask"]] for b in batches]).tolist(),
            [img.tobytes() for b in batches for img in b["image"][b["mask"]]],
            strict=True,
        )
    )
    mean, std = (np.array(v, np.float32) for v in recipe.mean_std)
    want = sorted(
        zip(
            test_labels.tolist(),
            [((img / 255.0 - mean) / std).astype(np.float32).tobytes() for img in test_images],
            strict=True,
        )
    )
    assert [label for label, _ in got] == [label for label, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        np.testing.assert_allclose(np.frombuffer(a, np.float32), np.frombuffer(b, np.float32), atol=1e-5)
    batch = next(
        data.make_train_iterator(
            "cifar10", batch_size=5, seed=0, data_dir=data_dir, process_index=0, process_count=1
        )
    )
    assert batch["image"].shape == (5, 32, 32, 3) and batch["label"].dtype == np.int32


@pytest.mark.skipif(HAS_TF, reason="checks the message shown where TensorFlow is missing")
def test_official_preparation_without_tensorflow_says_what_to_install(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="pip install tensorflow-cpu"):
        prepare.prepare("cifar10", str(tmp_path))
    assert prepare.main(["cub", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tensorflow-cpu" in err and "opencv" in err


def test_check_reports_missing_and_ready(tmp_path, capsys):
    assert prepare.main(["svhn", "--data_dir", str(tmp_path), "--check"]) == 1
    assert (
        f"python -m ib_attention_jax.data.prepare svhn_cropped --data_dir {tmp_path}"
        in capsys.readouterr().out
    )
    assert prepare.missing_requirements("cluttered_digits") == []


def test_check_on_a_prepared_dataset(tmp_path_factory, capsys):
    data_dir = tmp_path_factory.getbasetemp() / "tfds_data"  # shared with the other data tests
    data.build_cluttered_digits(str(data_dir))
    assert prepare.main(["cluttered_digits", "--data_dir", str(data_dir), "--check"]) == 0
    assert "prepared and readable" in capsys.readouterr().out
    assert prepare.main(["cluttered_digits", "--data_dir", str(data_dir)]) == 0  # already built: a no-op
    assert "train 20000, test 4000" in capsys.readouterr().out
