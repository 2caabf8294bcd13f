"""Localisation metrics for attention maps against ground-truth object boxes (pure numpy).

They answer "does the attention find the object?" for the models' spatial attention maps
(`out.attention.mean`, (b, h, w, 1) at map resolution) given one box per image, e.g. the CUB
bounding boxes.

Conventions shared by every function here:

- maps are (b, h, w) (or (b, h, w, 1)) at map resolution; map cell (i, j) covers the image block
  rows [i * S/h, (i+1) * S/h) and cols [j * S/w, (j+1) * S/w) of an S x S image, its centre is
  ((i + 0.5) * S/h, (j + 0.5) * S/w) in continuous pixel coordinates;
- boxes are (b, 4) `[ymin, xmin, ymax, xmax]` in image pixels with `ymax`/`xmax` EXCLUSIVE
  (an integer box [2, 3, 10, 12] covers rows 2..9 and cols 3..11); a point (y, x) is inside when
  ymin <= y < ymax and xmin <= x < xmax;
- pixel (r, c) belongs to a box when its centre (r + 0.5, c + 0.5) is inside, which for integer boxes
  is exactly the rows/cols listed above and extends the same rule to float boxes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_maps", "box_area_fraction", "energy_in_box", "pointing_game", "upsample_map"]


def as_maps(maps: np.ndarray) -> np.ndarray:
    """Validate and return maps as a (b, h, w) float64 array; (b, h, w, 1) is squeezed."""
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (b, h, w) or (b, h, w, 1), got {maps.shape}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps must have non-empty spatial dimensions, got {maps.shape}")
    return maps.astype(np.float64, copy=False)


def _as_boxes(boxes: np.ndarray, batch: int | None = None, maps_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate and return boxes as a (b, 4) float64 array, matching `batch` when given."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (b, 4) [ymin, xmin, ymax, xmax], got {boxes.shape}")
    if batch is not None and boxes.shape[0] != batch:
        raise ValueError(f"boxes {boxes.shape} and maps {maps_shape} have different batch sizes")
    return boxes.astype(np.float64, copy=False)


def _check_size(image_size: int) -> int:
    """Validate the (square) image side S."""
    if int(image_size) != image_size or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def _box_pixel_masks(boxes: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column membership of each box: (b, S) bool each, by the pixel-centre rule."""
    centres = np.arange(image_size, dtype=np.float64) + 0.5  # (S,)
    rows = (boxes[:, 0:1] <= centres) & (centres < boxes[:, 2:3])  # (b, S)
    cols = (boxes[:, 1:2] <= centres) & (centres < boxes[:, 3:4])  # (b, S)
    return rows, cols


def upsample_map(maps: np.ndarray, image_size: int) -> np.ndarray:
    """Nearest-neighbour upsampling (b, h, w) -> (b, S, S): each cell fills its (S/h) x (S/w) block.

    Exact block replication (no interpolation), so mass and argmax are those of the map; S must be
    divisible by h and w, otherwise cells would cover unequal blocks and a ValueError is raised.
    """
    maps = as_maps(maps)
    size = _check_size(image_size)
    _, h, w = maps.shape
    if size % h or size % w:
        raise ValueError(f"image_size {size} is not divisible by the map size ({h}, {w}) of maps {maps.shape}")
    return np.repeat(np.repeat(maps, size // h, axis=1), size // w, axis=2)  # (b, S, S)


def pointing_game(maps: np.ndarray, boxes: np.ndarray, image_size: int, tolerance_px: float = 0.0) -> np.ndarray:
    """Pointing-game hits, (b,) bool: the centre of each map's maximum cell lies inside its box.

    The maximum is the argmax over (h, w) (ties: the first in row-major order). The centre of cell
    (i, j) is ((i + 0.5) * S/h, (j + 0.5) * S/w) in image pixels. `tolerance_px` is the standard
    pointing-game tolerance (Zhang et al., 2016, use 15 px at 224x224): the box grows by that many
    pixels on each side before the test, so a peak just outside the object still counts as a hit.
    """
    maps = as_maps(maps)
    boxes = _as_boxes(boxes, maps.shape[0], maps.shape)
    size = _check_size(image_size)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be non-negative, got {tolerance_px}")
    b, h, w = maps.shape
    flat = np.argmax(maps.reshape(b, h * w), axis=1)  # (b,), first maximum on ties
    i, j = np.divmod(flat, w)
    y = (i + 0.5) * (size / h)  # (b,)
    x = (j + 0.5) * (size / w)  # (b,)
    t = float(tolerance_px)
    ymin, xmin, ymax, xmax = boxes.T
    return (ymin - t <= y) & (y < ymax + t) & (xmin - t <= x) & (x < xmax + t)


def energy_in_box(maps: np.ndarray, boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Share of attention mass inside the box, (b,) float in [0, 1].

    Negative values are clipped to 0, the map is upsampled to S x S by nearest neighbour
    (`upsample_map`), and the pixels of the box (pixel-centre rule) are summed against the whole
    image. A map with no mass gives 0. Compare with `box_area_fraction`, its uniform-map chance level.
    """
    maps = as_maps(maps)
    boxes = _as_boxes(boxes, maps.shape[0], maps.shape)
    size = _check_size(image_size)
    up = upsample_map(np.clip(maps, 0.0, None), size)  # (b, S, S)
    rows, cols = _box_pixel_masks(boxes, size)  # (b, S), (b, S)
    inside = np.einsum("bhw,bh,bw->b", up, rows.astype(np.float64), cols.astype(np.float64))  # (b,)
    total = up.sum(axis=(1, 2))  # (b,)
    return np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)


def box_area_fraction(boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Share of the S x S image each box covers, (b,) float: the chance level of `energy_in_box`.

    Counts the pixels inside the box by the same pixel-centre rule (so boxes are clipped to the image),
    which makes a uniform map's `energy_in_box` equal this value exactly.
    """
    boxes = _as_boxes(boxes)
    size = _check_size(image_size)
    rows, cols = _box_pixel_masks(boxes, size)  # (b, S), (b, S)
    return rows.sum(axis=1) * cols.sum(axis=1) / float(size * size)
