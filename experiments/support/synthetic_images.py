"""`synthetic_images`: generated stand-ins with the exact features of tfds's cifar10 and caltech_birds2011.

They exercise the real reading path (ArrayRecord, PNG/JPEG decoding, CUB's variable image sizes, normalised
boxes and skipped segmentation masks) where the official data cannot be downloaded: benchmarks and tests.
Pixels are smooth random fields plus noise, so the encoded sizes and decoding costs are those of photographs
rather than of pure noise. Labels carry no signal.

    synthetic_images/cifar     4,096 train / 512 test, 32x32 PNG, 10 classes
    synthetic_images/cub       512 train / 64 test, 300-500 px JPEG, 200 classes, bbox, segmentation_mask
    synthetic_images/cub_tiny  12 train / 5 test, as cub (unit tests)
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ib_attention_jax.data.recipes import RECIPES, Recipe

NAME = "synthetic_images"


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """kind: which official dataset's features to copy; sizes of the two splits."""

    kind: str = "cifar"
    num_train: int = 0
    num_test: int = 0


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: a bicubic-upsampled 6x6 random field plus mild noise."""
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return np.clip(field + rng.normal(0.0, 8.0, size=field.shape), 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cub_example(rng: np.random.Generator, index: int) -> dict:
    """One example with caltech_birds2011's features; the mask is an ellipse filling the box."""
    height, width = (int(v) for v in rng.integers(300, 501, size=2))
    ymin, xmin = rng.uniform(0.0, 0.4, size=2)
    ymax, xmax = ymin + rng.uniform(0.3, 0.6), xmin + rng.uniform(0.3, 0.6)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = (ymin + ymax) / 2 * height, (xmin + xmax) / 2 * width
    ry, rx = (ymax - ymin) / 2 * height, (xmax - xmin) / 2 * width
    mask = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0).astype(np.uint8)[..., None] * 255
    label = int(rng.integers(200))
    return {
        "image": _jpeg(smooth_image(rng, height, width)),  # encoded bytes: tfds stores them as they are
        "image/filename": f"{label + 1:03d}.Synthetic/img_{index:05d}.jpg",
        "label": label,
        "label_name": f"synthetic_{label:03d}",
        "bbox": tfds.features.BBox(ymin=float(ymin), xmin=float(xmin), ymax=float(ymax), xmax=float(xmax)),
        "segmentation_mask": Image.fromarray(mask[..., 0]).convert("L"),
    }


def cifar_example(rng: np.random.Generator, split: str, index: int) -> dict:
    """One example with cifar10's features."""
    return {
        "id": f"{split}_{index:05d}",
        "image": Image.fromarray(smooth_image(rng, 32, 32)),
        "label": int(rng.integers(10)),
    }


class SyntheticImages(tfds.core.GeneratorBasedBuilder):
    """Generated images with the features of cifar10 or caltech_birds2011."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        SyntheticConfig(name="cifar", kind="cifar", num_train=4096, num_test=512),
        SyntheticConfig(name="cub", kind="cub", num_train=512, num_test=64),
        SyntheticConfig(name="cub_tiny", kind="cub", num_train=12, num_test=5),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config.kind == "cub":
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(num_classes=200),
                    "label_name": tfds.features.Text(),
                    "bbox": tfds.features.BBoxFeature(),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                }
            )
        else:
            features = tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            )
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=features, supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        for i in range(count):
            rng = np.random.default_rng([0 if split == "train" else 1, i])
            if self.builder_config.kind == "cub":
                yield i, cub_example(rng, i)
            else:
                yield i, cifar_example(rng, split, i)


def build(config: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds `synthetic_images/<config>` as ArrayRecord under `data_dir` (no-op when already built)."""
    builder = SyntheticImages(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
            )
        )
    return builder


def recipe(config: str) -> Recipe:
    """The official recipe of the dataset `config` imitates, reading `synthetic_images/<config>` instead."""
    kind = next(c.kind for c in SyntheticImages.BUILDER_CONFIGS if c.name == config)
    base = RECIPES["cub" if kind == "cub" else "cifar10"]
    return dataclasses.replace(
        base,
        name=f"synthetic_{config}",
        tfds_name=f"{NAME}/{config}",
        prepare_hint=f'Build it: python -c "from experiments.support import synthetic_images; '
        f"synthetic_images.build('{config}', 'DATA_DIR')\"",
    )
