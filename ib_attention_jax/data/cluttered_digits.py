"""`cluttered_digits`: a TFDS dataset built offline from scikit-learn's handwritten digits.

It needs no download and no TensorFlow, and builds deterministically in seconds. It is the quickstart's
default dataset and, because every example records where its digit is, the ground truth for measuring
whether an attention map finds the object. See `clutter.py` for how an image is made.

Build it (ArrayRecord, readable by `tfds.data_source`) with:

    python -m ib_attention_jax.data.prepare cluttered_digits --data_dir DIR

Features:
    image         (32, 32, 3) uint8, stored raw: as small as PNG for these noisy images (3 KB) and several
                  times faster to write and read
    label         ClassLabel(10), the digit
    box           (4,) int32 [ymin, xmin, ymax, xmax], canvas pixels, exclusive ends: the placed digit's
                  square
    ink_box       (4,) int32, same convention: the tight box of the digit's ink (pixels above 0.25 intensity)
    source_index  int32, index of the source digit in `sklearn.datasets.load_digits()`

Splits: train (20,000) and test (4,000), drawn from disjoint, class-stratified sets of 1,438 and 359 source
digits (fragments included), so the test split shares no source digit with the train split.

`cluttered_digits_shifted` is its domain-shifted variant for cross-domain evaluation (`build_shifted`,
`SHIFTED_RECIPE`): the same features, `clutter.SHIFTED_STYLE` (smaller digits, more distractors, brighter
backgrounds with less contrast, more noise), and only the 359 source digits held out from `cluttered_digits`'
train split, halved again into disjoint pools for its train (5,000) and test (2,000) splits. A model trained
on `cluttered_digits` has seen none of these digits. It is a separate builder rather than a tfds builder
config so that `cluttered_digits` keeps its folder (`DATA_DIR/cluttered_digits/1.0.0`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ib_attention_jax.data import clutter
from ib_attention_jax.data.recipes import RECIPES, Recipe

NAME = "cluttered_digits"
SPLIT_SIZES = {"train": 20_000, "test": 4_000}
SEED = 20210801  # generation seed; example i of a split uses rng([SEED, split_id, i])
_SPLIT_IDS = {"train": 0, "test": 1}

SHIFTED_NAME = "cluttered_digits_shifted"
SHIFTED_SPLIT_SIZES = {"train": 5_000, "test": 2_000}
SHIFTED_SEED = 20210802
# How a model's input pipeline reads the shifted variant: the cluttered_digits recipe with the other builder.
SHIFTED_RECIPE: Recipe = dataclasses.replace(
    RECIPES[NAME], name=SHIFTED_NAME, tfds_name=SHIFTED_NAME,
    prepare_hint="Build it offline in seconds (no download, no TensorFlow):\n"
    "    python -c \"from ib_attention_jax.data import cluttered_digits; cluttered_digits.build_shifted('DATA_DIR')\"")


def shifted_source_pools(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified halves of the source digits held out from `cluttered_digits`' train split."""
    held_out = clutter.split_source_indices(labels)["test"]
    halves = clutter.split_source_indices(labels[held_out], test_fraction=0.5, seed=1)
    return {split: held_out[idx] for split, idx in halves.items()}


def _features() -> tfds.features.FeaturesDict:
    box = tfds.features.Tensor(shape=(4,), dtype=np.int32)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(
                shape=(clutter.CANVAS_SIZE, clutter.CANVAS_SIZE, 3),
                dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
            ),
            "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            "box": box,
            "ink_box": box,
            "source_index": tfds.features.Scalar(dtype=np.int32),
        }
    )


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """Handwritten digits placed among distractor fragments on a 32x32 colour canvas."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 20,000 train and 4,000 test examples."}
    STYLE = clutter.DEFAULT_STYLE
    SPLIT_SIZES = SPLIT_SIZES
    SEED = SEED
    DESCRIPTION = ("Handwritten digits (scikit-learn) placed among distractor fragments of other digits "
                   "on a 32x32 colour canvas, with the digit's placed box and ink box.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=_features(),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # stored in generation order: example i of a split is generator draw i
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in self.SPLIT_SIZES}

    def _source_pools(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        return clutter.split_source_indices(labels)

    def _generate_examples(self, split: str):
        """Yields (key, example); example i depends only on (SEED, split, i), not on generation order."""
        digits = clutter.load_source_digits()
        pool = self._source_pools(digits.labels)[split]
        for i in range(self.SPLIT_SIZES[split]):
            rng = np.random.default_rng([self.SEED, _SPLIT_IDS[split], i])
            example, label, source_index = clutter.generate(rng, digits, pool, self.STYLE)
            yield (
                i,
                {
                    "image": example.image,
                    "label": label,
                    "box": example.box,
                    "ink_box": example.ink_box,
                    "source_index": np.int32(source_index),
                },
            )


class ClutteredDigitsShifted(ClutteredDigits):
    """`cluttered_digits` under a domain shift, from the source digits its train split never saw."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 5,000 train and 2,000 test examples."}
    STYLE = clutter.SHIFTED_STYLE
    SPLIT_SIZES = SHIFTED_SPLIT_SIZES
    SEED = SHIFTED_SEED
    DESCRIPTION = ("cluttered_digits under a domain shift (smaller digits, denser clutter, other colours and "
                   "contrast, more noise), drawn only from the source digits held out from its train split.")

    def _source_pools(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        return shifted_source_pools(labels)


def _build(builder_class: type[ClutteredDigits], data_dir: str | None) -> tfds.core.DatasetBuilder:
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
            )
        )
    return builder


def build(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds `cluttered_digits` as ArrayRecord in `data_dir` (no-op if built); returns its builder."""
    return _build(ClutteredDigits, data_dir)


def build_shifted(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds `cluttered_digits_shifted` as ArrayRecord in `data_dir` (no-op if built); returns its builder."""
    return _build(ClutteredDigitsShifted, data_dir)
