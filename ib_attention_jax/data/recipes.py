"""Per-dataset constants: TFDS name, splits, classes, image size, augmentation kind, normalisation, preparation.

The augmentation and normalisation follow the official code (METHOD.md section 4). The normalisation belongs
to the *training recipe* rather than to the dataset: the official VGG code normalises CIFAR-10 and CIFAR-100
with the CIFAR-100 statistics, the WRN code normalises both with the CIFAR-10 statistics. Each dataset has a
default here; a config picks the official one by name (`normalization="cifar100"` for the VGG recipe).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Augmentation = Literal["pad_crop_flip", "box_crop_resize", "none"]

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # (mean, std) of x / 255 per RGB channel.
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # official WRN recipe (CIFAR-10 and -100)
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # official VGG recipe (CIFAR-10 and -100)
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # official SVHN recipe (both backbones); maps to [-1, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # official CUB recipe
}

TF_EXTRA = "pip install tensorflow-cpu  # optional extra, only to prepare the official datasets once"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset is read and preprocessed.

    box_key names the example's box feature, if any; box_format says whether it is normalised to [0, 1]
    (tfds `BBoxFeature`) or in pixels with exclusive ends (`cluttered_digits`).
    """

    name: str
    tfds_name: str
    num_classes: int
    image_size: int  # side of the square images a batch holds
    augmentation: Augmentation
    normalization: str
    train_split: str = "train"
    eval_split: str = "test"
    pad: int = 4  # reflect padding before the random crop (pad_crop_flip)
    flip: bool = True
    resize_size: int = 256  # square resize before the 224 crop (box_crop_resize)
    crop_to_box: bool = True  # the official CUB_crop: crop to the ground-truth box first (box_crop_resize)
    box_key: str | None = None
    box_format: Literal["normalized", "pixels"] = "normalized"
    skip_decoding: tuple[str, ...] = ()  # features never decoded (saves time; see pipeline.open_source)
    prepare_hint: str = ""

    @property
    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return NORMALIZATIONS[self.normalization]


def _official_hint(tfds_name: str, extra: str = "") -> str:
    return (f"Prepare it once (needs TensorFlow: {TF_EXTRA}):\n"
            f"    python -m ib_attention_jax.data.prepare {tfds_name} --data_dir DATA_DIR\n"
            f"which runs tfds's own builder with file_format=array_record "
            f"(equivalently: tfds build {tfds_name} --data_dir DATA_DIR --file_format array_record).{extra}")


_CUB_MANUAL = (
    "\nWithout network access, put the two archives tfds would download, CUB_200_2011.tgz "
    "(https://data.caltech.edu/records/65de6-vp158) and segmentations.tgz "
    "(https://data.caltech.edu/records/w9d68-gec53), under the folder given by --manual_dir "
    "(default DATA_DIR/downloads/manual/) with exactly these names; the builder also needs opencv-python.")

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("cifar10", "cifar10", 10, 32, "pad_crop_flip", "cifar10", prepare_hint=_official_hint("cifar10")),
    Recipe("cifar100", "cifar100", 100, 32, "pad_crop_flip", "cifar100", prepare_hint=_official_hint("cifar100")),
    # The official SVHN runs use the train split only (no 'extra') and the same crop and flip as CIFAR.
    Recipe("svhn", "svhn_cropped", 10, 32, "pad_crop_flip", "half", prepare_hint=_official_hint("svhn_cropped")),
    # STL-10 is only used for the cross-domain evaluation, whose protocol the official code does not include:
    # native 96x96, padding scaled with the image (4 * 96 / 32), CIFAR-10 statistics. Not an official recipe.
    Recipe("stl10", "stl10", 10, 96, "pad_crop_flip", "cifar10", pad=12, prepare_hint=_official_hint("stl10")),
    Recipe("cub", "caltech_birds2011", 200, 224, "box_crop_resize", "imagenet", box_key="bbox",
           skip_decoding=("segmentation_mask",), prepare_hint=_official_hint("caltech_birds2011", _CUB_MANUAL)),
    # Digits must not be mirrored; the quickstart trains on the generated images as they are.
    Recipe("cluttered_digits", "cluttered_digits", 10, 32, "none", "half", flip=False, box_key="box",
           box_format="pixels",
           prepare_hint="Build it offline in well under a minute (no download, no TensorFlow):\n"
                        "    python -m ib_attention_jax.data.prepare cluttered_digits --data_dir DATA_DIR"),
]}
ALIASES = {"svhn_cropped": "svhn", "caltech_birds2011": "cub", "cub200": "cub"}


def get_recipe(dataset: str | Recipe) -> Recipe:
    """The recipe of a dataset name (or alias, e.g. the TFDS name); a `Recipe` is returned unchanged."""
    if isinstance(dataset, Recipe):
        return dataset
    name = ALIASES.get(dataset, dataset)
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(RECIPES)} (aliases {sorted(ALIASES)})")
    return RECIPES[name]
