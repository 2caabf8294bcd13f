"""Opening prepared TFDS data for random access, and a clear error when it is not there.

Training reads `tfds.data_source(..., download=False)`: ArrayRecord files, random access, no TensorFlow. A
dataset that is not prepared (or prepared in a format without random access) raises
`DatasetNotPreparedError` at once, with the command that prepares it; tfds is never asked to download, so
there is no retry loop.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from ib_attention_jax.data.recipes import Recipe, get_recipe
from ib_attention_jax.errors import UserError

RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A dataset is missing from `data_dir`, or is not in a random-access format; the message says the fix."""


def register_builders(tfds_name: str) -> None:
    """Imports the module defining one of this library's own TFDS builders, so tfds knows the name."""
    name = tfds_name.split("/")[0]
    if name == "cluttered_digits":
        import ib_attention_jax.data.cluttered_digits  # noqa: F401  (registers the builder)


def default_data_dir() -> str:
    """The folder used when `data_dir` is None: $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's rule).

    Read from the environment at each call (tfds itself fixes it when it is imported).
    """
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, or the default data folder when it is None or empty."""
    return data_dir or default_data_dir()


def preparation_problem(recipe: Recipe, data_dir: str | None) -> str | None:
    """Why `recipe`'s dataset cannot be read from `data_dir` (a message with the fix), or None if it can."""
    register_builders(recipe.tfds_name)
    where = data_dir or f"{default_data_dir()} (the default; pass data_dir to read another folder)"
    data_dir = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(recipe.tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return f"Dataset {recipe.tfds_name!r} is neither a known TFDS builder nor prepared in {where}."
    if not builder.is_prepared():
        return (
            f"Dataset {recipe.tfds_name!r} is not prepared in {where} (looked for {builder.data_dir}).\n"
            f"{recipe.prepare_hint.replace('DATA_DIR', data_dir or 'DATA_DIR')}"
        )
    file_format = builder.info.file_format
    if file_format is None or file_format.value not in RANDOM_ACCESS_FORMATS:
        return (
            f"Dataset {recipe.tfds_name!r} is prepared in {builder.data_dir} as {file_format}, which has no "
            "random access. Convert it:\n"
            f"    tfds convert_format --dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record "
            f"--out_dir=NEW_DATA_DIR/{recipe.tfds_name}/{builder.version}\n"
            f"or prepare it again:\n{recipe.prepare_hint.replace('DATA_DIR', 'NEW_DATA_DIR')}"
        )
    return None


def check_prepared(dataset: str | Recipe, data_dir: str | None = None) -> None:
    """Raises DatasetNotPreparedError (with the fix) unless the dataset can be read from `data_dir`."""
    recipe = get_recipe(dataset)
    register_builders(recipe.tfds_name)
    if problem := preparation_problem(recipe, data_dir):
        raise DatasetNotPreparedError(problem)


def open_source(dataset: str | Recipe, split: str, data_dir: str | None = None) -> Sequence[dict[str, Any]]:
    """A random-access sequence of decoded examples of `split` (any tfds split string, e.g. 'train[:90%]').

    Features listed in the recipe's `skip_decoding` are left encoded. Never downloads: a dataset that is not
    prepared raises DatasetNotPreparedError within a second.
    """
    recipe = get_recipe(dataset)
    register_builders(recipe.tfds_name)
    data_dir = resolve_data_dir(data_dir)
    decoders = {key: tfds.decode.SkipDecoding() for key in recipe.skip_decoding} or None
    try:
        return tfds.data_source(
            recipe.tfds_name, split=split, data_dir=data_dir, download=False, decoders=decoders, try_gcs=False
        )
    except Exception as error:  # tfds raises several types here; diagnose before re-raising
        if problem := preparation_problem(recipe, data_dir):
            raise DatasetNotPreparedError(problem) from error
        raise


def num_examples(dataset: str | Recipe, split: str, data_dir: str | None = None) -> int:
    """Number of examples in `split` (slices such as 'train[:90%]' included)."""
    return len(open_source(dataset, split, data_dir))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What training needs to know before reading a batch. image_shape: (h, w, c) of a batch's images."""

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_split: str
    eval_split: str
    num_train_examples: int
    num_eval_examples: int


def dataset_info(
    dataset: str | Recipe,
    data_dir: str | None = None,
    *,
    train_split: str | None = None,
    eval_split: str | None = None,
    image_size: int | None = None,
) -> DatasetInfo:
    """Sizes, classes and batch image shape of a prepared dataset (DatasetNotPreparedError if absent)."""
    recipe = get_recipe(dataset)
    train_split = train_split or recipe.train_split
    eval_split = eval_split or recipe.eval_split
    size = image_size or recipe.image_size
    return DatasetInfo(
        recipe.name,
        recipe.tfds_name,
        recipe.num_classes,
        (size, size, 3),
        train_split,
        eval_split,
        num_examples(recipe, train_split, data_dir),
        num_examples(recipe, eval_split, data_dir),
    )
