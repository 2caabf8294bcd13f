"""Per-dataset constants: TFDS name, splits, classes, image size, augmentation, normalisation, preparation.

The augmentation and normalisation follow the official code (METHOD.md section 4). The normalisation belongs
to the *training recipe* rather than to the dataset: the official VGG code normalises CIFAR-10 and CIFAR-100
with the CIFAR-100 statistics, the WRN code normalises both with the CIFAR-10 statistics. Each dataset has a
default here; a config picks the official one by name (`normalization="cifar100"` for the VGG recipe).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

Augmentation = Literal["pad_crop_flip", "box_crop_resize", "none"]

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # (mean, std) of x / 255 per RGB channel.
    "cifar10": (
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
    ),  # official WRN recipe (CIFAR-10 and -100)
    "cifar100": (
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
    ),  # official VGG recipe (CIFAR-10 and -100)
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # official SVHN recipe (both backbones); maps to [-1, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # official CUB recipe
}

TF_EXTRA = "pip install tensorflow-cpu  # only the environment that prepares the data needs TensorFlow"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset is read and preprocessed.

    box_key names the example's box feature, if any; box_format says whether it is normalised to [0, 1]
    (tfds `BBoxFeature`) or in pixels with exclusive ends (`cluttered_digits`). drop_last says how the
    official loader counts an epoch: False keeps the last partial batch (ceil(examples / batch) steps,
    the official CIFAR/SVHN loaders), True drops it (floor; CUB). It sets the length of an epoch for
    the schedules (`steps_per_epoch`); the training stream itself always yields full batches and
    runs on across epoch boundaries.
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
    drop_last: bool = False  # an epoch as the official loader counts it: keep (False) or drop the last partial batch
    prepare_hint: str = ""

    def steps_per_epoch(self, num_examples: int, batch_size: int) -> int:
        """Optimiser steps in one epoch as the official loader counts them: ``ceil(examples / batch)``
        when it keeps the last partial batch, ``floor`` when it drops it (``drop_last``); at least 1.

        Training takes full batches from a stream that runs on across epochs, so with
        ``drop_last=False`` one epoch of ``ceil`` full batches holds a little more than one pass
        (CIFAR at 128: 391 x 128 = 50,048 images where the official 391st batch has 80), and
        the epoch boundary in the data stream moves on by that excess (48 images) every epoch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        steps = num_examples // batch_size if self.drop_last else -(-num_examples // batch_size)
        return max(steps, 1)

    @property
    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return NORMALIZATIONS[self.normalization]


def _official_hint(tfds_name: str, extra: str = "") -> str:
    return (
        f"Prepare it once with:\n"
        f"    {TF_EXTRA}\n"
        f"    python -m ib_attention_jax.data.prepare {tfds_name} --data_dir DATA_DIR\n"
        f"(tfds's own builder, written as ArrayRecord; the same as "
        f"`tfds build {tfds_name} --data_dir DATA_DIR --file_format array_record`).{extra}"
    )


_CUB_MANUAL = (
    "\nWithout network access, download CUB_200_2011.tgz (https://data.caltech.edu/records/65de6-vp158)\n"
    "and segmentations.tgz (https://data.caltech.edu/records/w9d68-gec53) elsewhere and put them, with\n"
    "exactly these names, in DATA_DIR/downloads/manual/ (or in the folder given by --manual_dir): tfds\n"
    "then reads them instead of downloading. tfds's CUB builder also needs opencv-python-headless."
)

_CLUTTERED_HINT = (
    "Build it offline in well under a minute (no download, no TensorFlow):\n"
    "    python -m ib_attention_jax.data.prepare cluttered_digits --data_dir DATA_DIR"
)
_CIFAR_LIKE = dict(image_size=32, augmentation="pad_crop_flip")
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(name="cifar10", tfds_name="cifar10", num_classes=10, normalization="cifar10",
               prepare_hint=_official_hint("cifar10"), **_CIFAR_LIKE),
        Recipe(name="cifar100", tfds_name="cifar100", num_classes=100, normalization="cifar100",
               prepare_hint=_official_hint("cifar100"), **_CIFAR_LIKE),
        # The official SVHN runs use the train split only (no 'extra') and the same crop and flip as CIFAR.
        Recipe(name="svhn", tfds_name="svhn_cropped", num_classes=10, normalization="half",
               prepare_hint=_official_hint("svhn_cropped"), **_CIFAR_LIKE),
        # STL-10 is only used for the cross-domain evaluation, whose protocol the official code lacks:
        # native 96x96, padding scaled with the image (4 * 96 / 32), CIFAR-10 statistics. Not official.
        Recipe(name="stl10", tfds_name="stl10", num_classes=10, image_size=96, augmentation="pad_crop_flip",
               normalization="cifar10", pad=12, prepare_hint=_official_hint("stl10")),
        Recipe(name="cub", tfds_name="caltech_birds2011", num_classes=200, image_size=224,
               augmentation="box_crop_resize", normalization="imagenet", box_key="bbox",
               skip_decoding=("segmentation_mask",), drop_last=True,
               prepare_hint=_official_hint("caltech_birds2011", _CUB_MANUAL)),
        # Digits must not be mirrored; the quickstart trains on the generated images as they are.
        Recipe(name="cluttered_digits", tfds_name="cluttered_digits", num_classes=10, image_size=32,
               augmentation="none", normalization="half", flip=False, box_key="box", box_format="pixels",
               drop_last=True, prepare_hint=_CLUTTERED_HINT),
    ]
}  # fmt: skip
ALIASES = {"svhn_cropped": "svhn", "caltech_birds2011": "cub", "cub200": "cub"}


def register_recipe(recipe: Recipe, mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None, *,
                    replace: bool = False) -> Recipe:
    """Makes ``recipe.name`` a dataset that configs and the pipelines know (``config.dataset = recipe.name``).

    ``recipe.tfds_name`` is any TFDS dataset with ``image`` and ``label`` features, prepared as ArrayRecord
    (``tfds build NAME --file_format array_record``). ``mean_std`` registers the recipe's normalisation
    under ``recipe.normalization`` (per-channel mean and std of x / 255); without it that name must be one
    of :data:`NORMALIZATIONS`. A name already registered is refused unless ``replace=True``. Call it where
    the run is configured (the config file's module level), so every mode of the command line sees it.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe takes a Recipe, got {type(recipe).__name__}")
    if recipe.augmentation not in typing.get_args(Augmentation):
        raise ValueError(f"recipe {recipe.name!r}: augmentation must be one of {typing.get_args(Augmentation)}, "
                         f"got {recipe.augmentation!r}")
    taken = recipe.name in RECIPES or recipe.name in ALIASES
    if taken and not replace and RECIPES.get(recipe.name) != recipe:
        raise ValueError(f"dataset {recipe.name!r} is already registered; pick another name or pass replace=True")
    if mean_std is not None:
        mean, std = (tuple(float(v) for v in values) for values in mean_std)
        known = NORMALIZATIONS.get(recipe.normalization)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"recipe {recipe.name!r}: mean_std must be (mean, std) per channel with std > 0, "
                             f"got {mean_std}")
        if known is not None and known != (mean, std) and not replace:
            raise ValueError(f"normalization {recipe.normalization!r} is already registered as {known}; name "
                             "the recipe's normalization differently or pass replace=True")
        NORMALIZATIONS[recipe.normalization] = (mean, std)
    elif recipe.normalization not in NORMALIZATIONS:
        raise ValueError(f"recipe {recipe.name!r}: normalization {recipe.normalization!r} is not one of "
                         f"{sorted(NORMALIZATIONS)}; pass mean_std=((r, g, b), (r, g, b)) to register it")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(dataset: str | Recipe) -> Recipe:
    """The recipe of a dataset name (or alias, e.g. the TFDS name); a `Recipe` is returned unchanged."""
    if isinstance(dataset, Recipe):
        return dataset
    name = ALIASES.get(dataset, dataset)
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(RECIPES)} (aliases {sorted(ALIASES)})")
    return RECIPES[name]
