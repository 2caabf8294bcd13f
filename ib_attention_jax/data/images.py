"""uint8 images to model input, scaled exactly as the input pipelines scale them.

The models take float NHWC images normalised per channel: ``(x / 255 - mean) / std`` with the
statistics of the training recipe (``recipes.NORMALIZATIONS``). Images read elsewhere (PIL, OpenCV,
a camera) are uint8; :func:`normalize_images` converts them:

    from ib_attention_jax.data import normalize_images
    x = normalize_images(uint8_images, "cifar10")   # (b, 32, 32, 3) uint8 -> float32
"""

from __future__ import annotations

import numpy as np

from ib_attention_jax.data.augment import normalize
from ib_attention_jax.data.recipes import NORMALIZATIONS, RECIPES, get_recipe


def normalize_images(images: np.ndarray, normalization: str) -> np.ndarray:
    """uint8 images (..., h, w, 3) in [0, 255] -> float32 ``(x / 255 - mean) / std``.

    ``normalization`` is a key of ``NORMALIZATIONS`` (``"cifar10"``, ``"half"``, ...) or a dataset name,
    which means its recipe's default statistics; a model trained with ``config.normalization`` set
    needs that name. Float input is refused: it may be normalised already.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize_images takes uint8 images in [0, 255], got {images.dtype}; float images are "
                        "taken to be normalised already and go to the model as they are")
    if images.shape[-1:] != (3,):
        raise ValueError(f"images must be channels-last RGB (..., h, w, 3), got shape {images.shape}")
    if normalization in NORMALIZATIONS:
        mean, std = NORMALIZATIONS[normalization]
    elif normalization in RECIPES or normalization in ("svhn_cropped", "caltech_birds2011", "cub200"):
        mean, std = get_recipe(normalization).mean_std
    else:
        raise ValueError(f"unknown normalization {normalization!r}; one of {sorted(NORMALIZATIONS)} or a dataset "
                         f"name ({sorted(RECIPES)})")
    return normalize(images, mean, std)
