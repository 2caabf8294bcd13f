"""grain pipelines: batches on mocked TFDS data and real builds, sharding, determinism, resumption, errors."""

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.support import synthetic_images
from ib_attention_jax import data
from ib_attention_jax.data.recipes import RECIPES

# caltech_birds2011 is read with its segmentation mask left encoded (SkipDecoding); tfds's mock can only
# encode fake examples with TensorFlow, so mocked CUB uses the same recipe with every feature decoded. The
# SkipDecoding path itself is covered by the synthetic CUB-shaped build below.
MOCK_RECIPES = {name: RECIPES[name] for name in ("cifar10", "cifar100", "svhn", "stl10")}
MOCK_RECIPES["cub"] = dataclasses.replace(RECIPES["cub"], skip_decoding=())


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS folder with the real cluttered_digits build (shared with test_data_cluttered_digits.py)."""
    path = tmp_path_factory.getbasetemp() / "tfds_data"
    data.build_cluttered_digits(str(path))
    return str(path)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "tfds_synthetic"
    synthetic_images.build("cub_tiny", str(path))
    return str(path)


def mocked(num_examples: int):
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def check_batch(batch: dict, recipe, batch_size: int, image_size: int | None = None, eval_: bool = False):
    """Shapes, dtypes and value ranges of one batch."""
    size = image_size or recipe.image_size
    keys = {"image", "label"} | ({"box"} if recipe.box_key else set()) | ({"mask"} if eval_ else set())
    assert set(batch) == keys
    assert batch["image"].shape == (batch_size, size, size, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (batch_size,) and batch["label"].dtype == np.int32
    mean, std = (np.array(v, np.float32) for v in recipe.mean_std)
    real = batch["mask"] if eval_ else np.ones(batch_size, bool)
    images = batch["image"][real]
    assert (images >= (0 - mean) / std - 1e-5).all() and (images <= (1 - mean) / std + 1e-5).all()
    assert images.std() > 0.05  # not blank
    assert ((batch["label"][real] >= 0) & (batch["label"][real] < recipe.num_classes)).all()
    if "box" in batch:
        assert batch["box"].shape == (batch_size, 4) and batch["box"].dtype == np.float32
        assert (batch["box"] >= 0).all() and (batch["box"] <= size).all()
    if eval_:
        assert batch["mask"].shape == (batch_size,) and batch["mask"].dtype == bool
        assert (batch["image"][~batch["mask"]] == 0).all()


@pytest.mark.parametrize("name", list(MOCK_RECIPES))
def test_pipelines_on_mocked_tfds(name):
    recipe = MOCK_RECIPES[name]
    with mocked(num_examples=21):
        train = data.make_train_iterator(recipe, batch_size=4, seed=0, process_index=0, process_count=1)
        for _ in range(3):
            check_batch(next(train), recipe, 4)
        batches = list(data.make_eval_iterator(recipe, batch_size=8, process_index=0, process_count=1))
        assert len(batches) == 3
        for batch in batches:
            check_batch(batch, recipe, 8, eval_=True)
        assert sum(int(b["mask"].sum()) for b in batches) == 21
        info = data.dataset_info(recipe)
        assert (info.num_train_examples, info.num_eval_examples) == (21, 21)
        assert info.image_shape == (recipe.image_size, recipe.image_size, 3)


def test_stl10_can_be_read_at_cifar_resolution():
    with mocked(num_examples=8):
        batch = next(
            data.make_train_iterator(
                "stl10", batch_size=4, seed=0, image_size=32, process_index=0, process_count=1
            )
        )
    check_batch(batch, RECIPES["stl10"], 4, image_size=32)


def test_cluttered_digits_pipeline_on_the_real_build(data_dir):
    recipe = RECIPES["cluttered_digits"]
    batch = next(
        data.make_train_iterator(
            "cluttered_digits", batch_size=32, seed=0, data_dir=data_dir, process_index=0, process_count=1
        )
    )
    check_batch(batch, recipe, 32)
    side = batch["box"][:, 2] - batch["box"][:, 0]
    assert side.min() >= 12 and side.max() <= 16
    eval_batches = list(
        data.make_eval_iterator(
            "cluttered_digits", batch_size=1000, data_dir=data_dir, process_index=0, process_count=1
        )
    )
    assert len(eval_batches) == 4 and all(b["mask"].all() for b in eval_batches)
    check_batch(eval_batches[0], recipe, 1000, eval_=True)
    info = data.dataset_info("cluttered_digits", data_dir)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 20000, 4000)


def test_split_strings_pass_through_for_a_validation_split(data_dir):
    info = data.dataset_info(
        "cluttered_digits", data_dir, train_split="train[:90%]", eval_split="train[90%:]"
    )
    assert (info.num_train_examples, info.num_eval_examples) == (18000, 2000)
    batches = list(
        data.make_eval_iterator(
            "cluttered_digits",
            batch_size=512,
            data_dir=data_dir,
            split="train[90%:]",
            process_index=0,
            process_count=1,
        )
    )
    assert sum(int(b["mask"].sum()) for b in batches) == 2000


def test_cub_shaped_real_build_with_skipped_masks(synthetic_dir):
    recipe = synthetic_images.recipe("cub_tiny")
    assert recipe.skip_decoding == ("segmentation_mask",)
    source = data.open_source(recipe, "train", synthetic_dir)
    assert isinstance(source[0]["segmentation_mask"], bytes)  # left encoded
    train = data.make_train_iterator(
        recipe, batch_size=4, seed=1, data_dir=synthetic_dir, process_index=0, process_count=1
    )
    check_batch(next(train), recipe, 4)
    batches = list(
        data.make_eval_iterator(
            recipe, batch_size=2, data_dir=synthetic_dir, process_index=0, process_count=1
        )
    )
    assert [int(b["mask"].sum()) for b in batches] == [2, 2, 1]
    for batch in batches:
        check_batch(batch, recipe, 2, eval_=True)


def indexed_source(n: int) -> list[dict]:
    """n CIFAR-shaped examples whose label is their index, so each can be traced through the pipeline."""
    return [{"image": np.full((32, 32, 3), i % 256, np.uint8), "label": i} for i in range(n)]


@pytest.mark.parametrize("num_examples", [1, 50, 101])
@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_example_exactly_once_on_any_number_of_hosts(num_examples, process_count):
    source = indexed_source(num_examples)
    seen, lengths = [], set()
    for index in range(process_count):
        batches = list(
            data.make_eval_iterator(
                "cifar10", batch_size=8, source=source, process_index=index, process_count=process_count
            )
        )
        lengths.add(len(batches))
        for batch in batches:
            assert batch["image"].shape == (8, 32, 32, 3)
            seen += batch["label"][batch["mask"]].tolist()
    assert sorted(seen) == list(range(num_examples))
    assert lengths == {data.num_eval_batches(num_examples, 8, process_count)}  # hosts stay in step


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_train_shards_are_disjoint_and_equal(process_count):
    source = indexed_source(100)
    per_host = 100 // process_count
    shards = []
    for index in range(process_count):
        it = data.make_train_iterator(
            "cifar10",
            batch_size=per_host,
            seed=3,
            source=source,
            num_epochs=1,
            augment=False,
            process_index=index,
            process_count=process_count,
        )
        labels = next(it)["label"].tolist()
        with pytest.raises(StopIteration):
            next(it)
        assert len(set(labels)) == per_host
        shards.append(set(labels))
    assert not set.intersection(*shards) if process_count > 1 else True
    assert sum(len(s) for s in shards) == per_host * process_count
    assert data.steps_per_epoch(100, 8, process_count) == per_host // 8


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_same_seed_same_batches_and_resume_from_saved_state():
    kwargs = dict(batch_size=4, process_index=0, process_count=1)
    with mocked(num_examples=23):
        first = take(data.make_train_iterator("cifar10", seed=5, **kwargs), 12)  # crosses epoch boundaries
        assert_same_batches(
            first, take(data.make_train_iterator("cifar10", seed=5, num_threads=1, **kwargs), 12)
        )
        other = take(data.make_train_iterator("cifar10", seed=6, **kwargs), 12)
        assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(first, other, strict=True))

        it = data.make_train_iterator("cifar10", seed=5, **kwargs)
        take(it, 3)  # mid-epoch (5 batches per epoch)
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
        rest = take(it, 9)
        resumed = data.make_train_iterator("cifar10", seed=5, **kwargs)
        resumed.set_state(state)
        assert_same_batches(rest, take(resumed, 9))
        assert_same_batches(first[3:], rest)


def test_batch_iterator_state_is_the_position():
    import grain

    it = data.BatchIterator(grain.MapDataset.range(10).batch(3), num_threads=1)
    assert len(it) == 4 and next(it).tolist() == [0, 1, 2] and it.get_state() == {"position": 1}
    it.set_state({"position": 3})
    assert len(it) == 1 and next(it).tolist() == [9]
    with pytest.raises(StopIteration):
        next(it)


def test_epochs_reshuffle_and_augment_anew():
    source = indexed_source(16)
    it = data.make_train_iterator(
        "cifar10", batch_size=16, seed=0, source=source, process_index=0, process_count=1
    )
    epoch1, epoch2 = next(it), next(it)
    assert sorted(epoch1["label"]) == sorted(epoch2["label"]) == list(range(16))
    assert not np.array_equal(epoch1["label"], epoch2["label"])


def test_worker_processes_give_the_same_batches_and_state(data_dir):
    kwargs = dict(batch_size=16, seed=2, data_dir=data_dir, process_index=0, process_count=1)
    reference = take(data.make_train_iterator("cluttered_digits", **kwargs), 6)
    it = data.make_train_iterator("cluttered_digits", num_workers=1, **kwargs)
    try:
        assert_same_batches(reference[:3], take(it, 3))
        state = it.get_state()
    finally:
        it.close()
    resumed = data.make_train_iterator("cluttered_digits", **kwargs)
    resumed.set_state(state)
    assert_same_batches(reference[3:], take(resumed, 3))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", ["python -m ib_attention_jax.data.prepare cifar10 --data_dir {dir}", "tensorflow-cpu"]),
        (
            "cub",
            [
                "python -m ib_attention_jax.data.prepare caltech_birds2011 --data_dir {dir}",
                "{dir}/downloads/manual/",
                "CUB_200_2011.tgz",
                "segmentations.tgz",
            ],
        ),
        ("cluttered_digits", ["python -m ib_attention_jax.data.prepare cluttered_digits --data_dir {dir}"]),
    ],
)
def test_missing_dataset_is_a_clear_error_at_once(tmp_path, name, expected):
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.make_train_iterator(
            name, batch_size=4, seed=0, data_dir=str(tmp_path), process_index=0, process_count=1
        )
    assert time.perf_counter() - start < 5
    assert isinstance(error.value, FileNotFoundError)
    for text in expected:
        assert text.format(dir=tmp_path) in str(error.value)
    with pytest.raises(data.DatasetNotPreparedError):
        data.dataset_info(name, str(tmp_path))
    with pytest.raises(data.DatasetNotPreparedError):
        data.check_prepared(name, str(tmp_path))


def test_dataset_without_random_access_format_says_how_to_convert(data_dir, tmp_path):
    version_dir = Path(data_dir) / "cluttered_digits" / "1.0.0"
    copy = tmp_path / "cluttered_digits" / "1.0.0"
    copy.mkdir(parents=True)
    for path in version_dir.glob("*.json"):
        shutil.copy(path, copy)
    info = json.loads((copy / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"
    (copy / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(data.DatasetNotPreparedError, match="convert_format"):
        data.make_eval_iterator(
            "cluttered_digits", batch_size=4, data_dir=str(tmp_path), process_index=0, process_count=1
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        data.make_train_iterator(
            "cifar10", batch_size=8, seed=0, source=indexed_source(10), process_index=0, process_count=2
        )
    with pytest.raises(ValueError, match="process_index"):
        data.make_eval_iterator(
            "cifar10", batch_size=8, source=indexed_source(10), process_index=2, process_count=2
        )
    with pytest.raises(ValueError, match="normalization"):
        data.make_eval_iterator(
            "cifar10",
            batch_size=8,
            source=indexed_source(10),
            normalization="cifar11",
            process_index=0,
            process_count=1,
        )


def test_official_normalization_can_be_chosen_per_recipe():
    source = [{"image": np.zeros((32, 32, 3), np.uint8), "label": 0}]
    batch = next(
        data.make_eval_iterator(
            "cifar10", batch_size=1, source=source, normalization="cifar100", process_index=0, process_count=1
        )
    )
    np.testing.assert_allclose(
        batch["image"][0, 0, 0], -np.array([0.5071, 0.4867, 0.4408]) / [0.2675, 0.2565, 0.2761], rtol=1e-5
    )
