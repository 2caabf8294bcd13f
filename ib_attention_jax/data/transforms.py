"""Per-example preprocessing of a recipe: a decoded TFDS example -> the arrays one batch row holds.

Output of `preprocess` (one example, before batching):
    image  float32 (s, s, 3), normalised with the recipe's mean and std
    label  int32 ()
    box    float32 (4,) [ymin, xmin, ymax, xmax] in output-image pixels, exclusive ends (recipes with a box)

The grain transforms at the end wrap it so worker processes can pickle them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from ib_attention_jax.data import augment
from ib_attention_jax.data.recipes import Recipe


def ensure_rgb(image: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1) or (h, w, 4) uint8 -> (h, w, 3) (a few CUB photographs are greyscale)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def pixel_box(example: dict[str, Any], recipe: Recipe, height: int, width: int) -> np.ndarray | None:
    """The example's box as float32 pixel coordinates of its (height, width) image, or None."""
    if recipe.box_key is None:
        return None
    box = np.asarray(example[recipe.box_key], np.float32)
    if recipe.box_format == "normalized":
        box = augment.scale_box(box, height, width)
    return box


def _pad_crop_flip(
    image: np.ndarray, box: np.ndarray | None, recipe: Recipe, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """CIFAR/SVHN/STL: optional resize to `size`, then (training) reflect-pad random crop and flip."""
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        image = augment.resize_bilinear(image, size, size)
        box = None if box is None else augment.scale_box(box, size / h, size / w)
    if rng is not None:
        if recipe.pad:
            image, (top, left) = augment.pad_and_random_crop(image, rng, recipe.pad)
            box = None if box is None else augment.shift_box(box, recipe.pad - top, recipe.pad - left)
        if recipe.flip:
            image, box = _random_flip(image, box, rng, size)
    return image, box


def _random_flip(image: np.ndarray, box: np.ndarray | None, rng: np.random.Generator, size: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Flips left-right with probability 0.5, mirroring the box with the image."""
    image, flipped = augment.random_flip(image, rng)
    return image, (augment.flip_box(box, size) if (flipped and box is not None) else box)


def _box_crop_resize(
    image: np.ndarray, box: np.ndarray | None, recipe: Recipe, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """CUB: crop to the box (CUB_crop), square resize, then random crop and flip (train) or centre crop."""
    if recipe.crop_to_box and recipe.box_key is not None:
        h, w = image.shape[:2]
        top, left, bottom, right = augment.round_box(box, h, w)
        image = image[top:bottom, left:right]
        box = np.array([0, 0, bottom - top, right - left], np.float32)  # the crop is the box
    h, w = image.shape[:2]
    image = augment.resize_bilinear(image, recipe.resize_size, recipe.resize_size)
    if box is not None:
        box = augment.scale_box(box, recipe.resize_size / h, recipe.resize_size / w)
    if rng is None:
        top, left = augment.center_crop_offsets(image.shape[:2], (size, size))
    else:
        top, left = augment.random_crop_offsets(rng, image.shape[:2], (size, size))
    image = augment.crop(image, top, left, size, size)
    box = None if box is None else augment.shift_box(box, -top, -left)
    if rng is not None and recipe.flip:
        image, box = _random_flip(image, box, rng, size)
    return image, box


def _resize_only(
    image: np.ndarray, box: np.ndarray | None, recipe: Recipe, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """No augmentation (cluttered_digits): resize only if the image is not already `size`."""
    return _pad_crop_flip(image, box, dataclasses.replace(recipe, pad=0, flip=False), size, None)


_GEOMETRY = {"pad_crop_flip": _pad_crop_flip, "box_crop_resize": _box_crop_resize, "none": _resize_only}


def preprocess(
    example: dict[str, Any],
    recipe: Recipe,
    image_size: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """One decoded example -> {'image', 'label'[, 'box']} (see module docstring).

    With `rng` the recipe's training augmentation is applied; without it, the deterministic evaluation path.
    """
    size = image_size or recipe.image_size
    image = ensure_rgb(np.asarray(example["image"]))
    box = pixel_box(example, recipe, *image.shape[:2])
    image, box = _GEOMETRY[recipe.augmentation](image, box, recipe, size, rng)
    out = {"image": augment.normalize(image, *recipe.mean_std), "label": np.int32(example["label"])}
    if box is not None:
        out["box"] = augment.clip_box(box, size, size)
    return out


def padding_example(recipe: Recipe, image_size: int | None = None) -> dict[str, np.ndarray]:
    """A zero example with the shapes and dtypes `preprocess` returns, and mask False (pads eval batches)."""
    size = image_size or recipe.image_size
    out = {"image": np.zeros((size, size, 3), np.float32), "label": np.int32(0), "mask": np.bool_(False)}
    if recipe.box_key is not None:
        out["box"] = np.zeros((4,), np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """grain transform: `preprocess` with the training augmentation, random with grain's per-element rng."""

    recipe: Recipe
    image_size: int | None = None
    augment: bool = True

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return preprocess(element, self.recipe, self.image_size, rng if self.augment else None)


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """grain transform: deterministic `preprocess`, plus mask True (a real example)."""

    recipe: Recipe
    image_size: int | None = None

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        return {**preprocess(element, self.recipe, self.image_size), "mask": np.bool_(True)}


@dataclasses.dataclass(frozen=True)
class PaddingTransform(grain.transforms.Map):
    """grain transform: any index -> `padding_example`."""

    recipe: Recipe
    image_size: int | None = None

    def map(self, element: Any) -> dict[str, np.ndarray]:
        del element
        return padding_example(self.recipe, self.image_size)
