"""`cluttered_digits`: the real build with the documented command, its contents, and the generator's rules."""

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ib_attention_jax.data import clutter, cluttered_digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, tuple[float, float] | None]:
    """The full dataset built once per session by the documented command, and its (wall, CPU) seconds.

    The folder is shared with the other data test modules; the times are None if one of them built it first.
    """
    data_dir = tmp_path_factory.getbasetemp() / "tfds_data"
    fresh = not (data_dir / "cluttered_digits").exists()
    command = [sys.executable, "-m", "ib_attention_jax.data.prepare", "cluttered_digits"]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(
        [*command, "--data_dir", str(data_dir)], cwd=ROOT, check=True, capture_output=True, timeout=600
    )
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - start
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return data_dir, (wall, cpu) if fresh else None


def read_split(
    data_dir: Path, split: str, keys: tuple[str, ...], skip_image: bool = True
) -> dict[str, np.ndarray]:
    """Features `keys` of every example of `split`, stacked."""
    decoders = {"image": tfds.decode.SkipDecoding()} if skip_image else None
    source = tfds.data_source(
        "cluttered_digits", split=split, data_dir=str(data_dir), download=False, decoders=decoders
    )
    examples = source.__getitems__(list(range(len(source))))
    return {key: np.stack([np.asarray(ex[key]) for ex in examples]) for key in keys}


def test_documented_command_builds_the_full_dataset_in_well_under_a_minute(built):
    data_dir, seconds = built
    builder = tfds.builder("cluttered_digits", data_dir=str(data_dir))
    assert builder.is_prepared()
    assert builder.info.file_format.value == "array_record"
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 20000,
        "test": 4000,
    }
    if seconds is None:
        pytest.skip(
            "built earlier in this session by another module: run this module first to time the build"
        )
    wall, cpu = seconds
    print(f"cluttered_digits build (documented command): {wall:.1f} s wall, {cpu:.1f} s CPU")
    assert cpu < 60  # CPU time: the wall time also counts whatever else the machine is running


def test_test_split_shares_no_source_digit_with_train(built):
    train = read_split(built[0], "train", ("source_index",))["source_index"]
    test = read_split(built[0], "test", ("source_index",))["source_index"]
    assert not set(train.tolist()) & set(test.tolist())
    assert len(set(train.tolist())) > 1000 and len(set(test.tolist())) > 300  # the pools are well used
    pools = clutter.split_source_indices(clutter.load_source_digits().labels)
    assert set(train.tolist()) <= set(pools["train"].tolist()) and set(test.tolist()) <= set(
        pools["test"].tolist()
    )
    assert not set(pools["train"].tolist()) & set(pools["test"].tolist())


def test_features_labels_and_boxes(built):
    data = read_split(built[0], "test", ("label", "box", "ink_box", "source_index"))
    digits = clutter.load_source_digits()
    np.testing.assert_array_equal(
        data["label"], digits.labels[data["source_index"]]
    )  # the label is the digit
    assert np.bincount(data["label"], minlength=10).min() > 300  # every class is well represented
    box, ink = data["box"], data["ink_box"]
    assert box.dtype == np.int32 and ink.dtype == np.int32 and box.shape == (4000, 4)
    side = box[:, 2] - box[:, 0]
    np.testing.assert_array_equal(side, box[:, 3] - box[:, 1])  # square
    assert side.min() == 12 and side.max() == 16
    assert (box >= 0).all() and (box <= 32).all()
    assert (
        (ink[:, :2] >= box[:, :2]).all()
        and (ink[:, 2:] <= box[:, 2:]).all()
        and (ink[:, 2:] > ink[:, :2]).all()
    )


def test_stored_examples_are_what_the_generator_makes(built):
    """Generation is deterministic: example i of a split depends only on (seed, split, i)."""
    source = tfds.data_source("cluttered_digits", split="test", data_dir=str(built[0]), download=False)
    digits = clutter.load_source_digits()
    pool = clutter.split_source_indices(digits.labels)["test"]
    for i in (0, 1, 1234, 3999):
        stored = source[i]
        assert stored["image"].shape == (32, 32, 3) and stored["image"].dtype == np.uint8
        example, label, index = clutter.generate(
            np.random.default_rng([cluttered_digits.SEED, 1, i]), digits, pool
        )
        np.testing.assert_array_equal(stored["image"], example.image)
        np.testing.assert_array_equal(stored["box"], example.box)
        np.testing.assert_array_equal(stored["ink_box"], example.ink_box)
        assert (stored["label"], stored["source_index"]) == (label, index)


def test_images_are_cluttered_and_tinted(built):
    source = tfds.data_source("cluttered_digits", split="train", data_dir=str(built[0]), download=False)
    outside_ink, colours = [], []
    for i in range(0, 2000, 20):
        ex = source[i]
        image = ex["image"].astype(np.float32)
        y0, x0, y1, x1 = ex["box"]
        outside = np.ones((32, 32), bool)
        outside[y0:y1, x0:x1] = False
        bright = image.mean(-1) > np.percentile(image.mean(-1), 50) + 40  # well above the background
        outside_ink.append(bright[outside].sum())
        colours.append(image[bright].mean(0) if bright.any() else image.mean((0, 1)))
    assert np.median(outside_ink) > 40  # distractors outside the digit's box
    assert np.std(np.stack(colours), axis=0).min() > 10  # ink colour varies between images


def test_source_digits_are_resized_like_pil():
    digits = clutter.load_source_digits()
    for size, resized in [(12, digits.scaled[12]), (15, digits.scaled[15]), (16, digits.doubled)]:
        for i in (0, 100, 1796):
            pil = Image.fromarray(digits.images[i], mode="F").resize((size, size), Image.Resampling.BILINEAR)
            np.testing.assert_allclose(resized[i], np.asarray(pil), atol=1e-5)


def test_fragments_keep_off_the_digit_and_carry_ink():
    digits = clutter.load_source_digits()
    rng = np.random.default_rng(0)
    stream = clutter.UniformStream(rng)
    box = (8, 8, 24, 24)
    for _ in range(500):
        fragment = clutter.sample_fragment(stream, digits, int(rng.integers(len(digits.labels))))
        h, w = fragment.shape
        assert 8 <= h <= 12 and 8 <= w <= 12  # 4-6 px crops scaled x2
        y, x = clutter.place_fragment(stream, h, w, box)
        assert 0 <= y <= 32 - h and 0 <= x <= 32 - w
        assert clutter.overlap_area(box, y, x, h, w) <= 0.2 * h * w
    inky = [int((clutter.sample_fragment(stream, digits, i) > 0.5).sum()) for i in range(300)]
    assert np.mean(np.array(inky) >= 8) > 0.95  # nearly empty crops are redrawn


def test_generate_draws_fragments_from_other_classes_of_the_same_pool(monkeypatch):
    digits = clutter.load_source_digits()
    pool = clutter.split_source_indices(digits.labels)["train"]
    calls = []
    make_example = clutter.make_example
    monkeypatch.setattr(
        clutter,
        "make_example",
        lambda rng, d, index, fragments, **kwargs: (
            calls.append((index, fragments)) or make_example(rng, d, index, fragments, **kwargs)
        ),
    )
    for i in range(200):
        example, label, index = clutter.generate(np.random.default_rng([7, i]), digits, pool)
        again, _, _ = clutter.generate(np.random.default_rng([7, i]), digits, pool)
        np.testing.assert_array_equal(example.image, again.image)  # deterministic given the generator
        assert example.image.shape == (32, 32, 3) and example.image.dtype == np.uint8
        assert index in pool and label == digits.labels[index]
    for index, fragments in calls:
        assert len(fragments) == clutter.NUM_FRAGMENTS[1] and set(fragments.tolist()) <= set(pool.tolist())
        assert (digits.labels[fragments] != digits.labels[index]).all()


@pytest.fixture(scope="session")
def built_shifted(built) -> Path:
    """`cluttered_digits_shifted` built next to `cluttered_digits` (the probe builds it the same way)."""
    cluttered_digits.build_shifted(str(built[0]))
    return built[0]


def test_shifted_variant_has_its_own_folder_splits_and_unseen_digits(built_shifted):
    data_dir = built_shifted
    assert (data_dir / "cluttered_digits" / "1.0.0").is_dir()  # the original keeps its folder
    builder = tfds.builder("cluttered_digits_shifted", data_dir=str(data_dir))
    assert builder.is_prepared() and builder.info.file_format.value == "array_record"
    assert {n: s.num_examples for n, s in builder.info.splits.items()} == {"train": 5000, "test": 2000}
    indices = {}
    for split in ("train", "test"):
        source = tfds.data_source("cluttered_digits_shifted", split=split, data_dir=str(data_dir), download=False,
                                  decoders={"image": tfds.decode.SkipDecoding()})
        indices[split] = {int(ex["source_index"]) for ex in source.__getitems__(list(range(len(source))))}
    pools = clutter.split_source_indices(clutter.load_source_digits().labels)
    assert not indices["train"] & indices["test"]  # disjoint halves
    assert not (indices["train"] | indices["test"]) & set(pools["train"].tolist())  # never seen in training
    assert len(indices["train"]) > 150 and len(indices["test"]) > 150


def test_shifted_examples_follow_the_shifted_style(built_shifted):
    digits = clutter.load_source_digits()
    pool = cluttered_digits.shifted_source_pools(digits.labels)["test"]
    source = tfds.data_source("cluttered_digits_shifted", split="test", data_dir=str(built_shifted), download=False)
    for i in (0, 17, 1999):
        example, label, index = clutter.generate(
            np.random.default_rng([cluttered_digits.SHIFTED_SEED, 1, i]), digits, pool, clutter.SHIFTED_STYLE)
        np.testing.assert_array_equal(source[i]["image"], example.image)
        assert (source[i]["label"], source[i]["source_index"]) == (label, index)
    boxes = np.stack([source[i]["box"] for i in range(0, 2000, 10)])
    side = boxes[:, 2] - boxes[:, 0]
    assert side.min() == 9 and side.max() == 11  # another digit scale
    original = tfds.data_source("cluttered_digits", split="test", data_dir=str(built_shifted), download=False)
    dark = [np.percentile(src[i]["image"].mean(-1), 10) for src in (original, source) for i in range(0, 400, 4)]
    assert np.median(dark[100:]) > np.median(dark[:100]) + 20  # brighter backgrounds


def test_clutter_style_checks_its_ranges():
    with pytest.raises(ValueError, match="digit_sizes"):
        clutter.ClutterStyle(digit_sizes=(20, 24))
    with pytest.raises(ValueError, match="num_fragments"):
        clutter.ClutterStyle(num_fragments=(5, 3))
    digits = clutter.load_source_digits()
    pool = clutter.split_source_indices(digits.labels)["train"]
    default, _, _ = clutter.generate(np.random.default_rng([3, 1]), digits, pool)
    explicit, _, _ = clutter.generate(np.random.default_rng([3, 1]), digits, pool, clutter.DEFAULT_STYLE)
    np.testing.assert_array_equal(default.image, explicit.image)
