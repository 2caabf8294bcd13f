"""PNG overlays of attention maps on their images, with numpy and PIL only (no matplotlib).

`save_attention_grid` writes one contact sheet (image, continuous-map overlay, quantised map per
example) for looking at a batch at a glance; `save_attention_maps` writes per-image files named like
the official code's dumps (`test_0000.png`, `test_0000_att00.png`, `test_0000_att00_q.png`) so the two
can be compared side by side. Boxes follow `evaluation.localization`: `[ymin, xmin, ymax, xmax]` in
image pixels with exclusive max.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from ib_attention_jax.evaluation.localization import as_maps
from ib_attention_jax.runtime.atomic import atomic_write_bytes
from ib_attention_jax.runtime.paths import as_path

__all__ = [
    "GRID_PAD",
    "GRID_TEXT_HEIGHT",
    "attention_grid",
    "colorize",
    "denormalize",
    "examples_grid",
    "grid_size",
    "overlay",
    "save_attention_grid",
    "save_attention_maps",
]

# Grid layout, in output pixels: PAD between tiles of a cell, between cells and around the grid;
# a text strip of TEXT_HEIGHT on top of every cell when labels or predictions are given.
GRID_PAD = 2
GRID_TEXT_HEIGHT = 14
_BACKGROUND = (24, 24, 24)
_BOX_COLOUR = (255, 0, 255)  # magenta: absent from the colormap and rare in natural images
_TEXT_RIGHT = (40, 220, 40)
_TEXT_WRONG = (235, 50, 50)
_TEXT_NEUTRAL = (230, 230, 230)

# Jet-like colormap, piecewise linear in t in [0, 1]: blue -> cyan -> yellow -> red.
_CMAP_STOPS = np.array([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])
_CMAP_COLOURS = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float64)  # (4, 3)


def _as_maps(maps: np.ndarray) -> np.ndarray:
    """(b, h, w) or (b, h, w, 1) -> (b, h, w) float32, else ValueError (the localisation check)."""
    return as_maps(maps).astype(np.float32)


def _as_images(images: np.ndarray) -> np.ndarray:
    """uint8 (b, H, W, 3), (b, H, W, 1) or (b, H, W) -> (b, H, W, 3) uint8, else ValueError."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (use denormalize first), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (b, H, W, 3), (b, H, W, 1) or (b, H, W), got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def _check_batch(images: np.ndarray, maps: np.ndarray, name: str = "maps") -> None:
    """Images and maps must hold the same number of examples."""
    if images.shape[0] != maps.shape[0]:
        raise ValueError(f"images {images.shape} and {name} {maps.shape} have different batch sizes")


def _resize(maps: np.ndarray, size_hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """(b, h, w) float -> (b, H, W) float32 with a PIL resampling filter on mode-F images."""
    height, width = size_hw
    out = np.empty((maps.shape[0], height, width), np.float32)
    for k, m in enumerate(maps):
        out[k] = np.asarray(Image.fromarray(np.ascontiguousarray(m, np.float32)).resize((width, height), resample))
    return out


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Each (h, w) map scaled to [0, 1] on its own; a constant map becomes zeros. (b, h, w) -> (b, h, w)."""
    maps = maps.astype(np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def colorize(maps: np.ndarray) -> np.ndarray:
    """(b, h, w) floats -> (b, h, w, 3) uint8 through a jet-like colormap (blue -> cyan -> yellow -> red).

    Each map is min-max normalised on its own, so the colours show where a map is high relative to
    itself; a constant map gets the colour of 0 (blue) everywhere.
    """
    t = _minmax(_as_maps(maps))  # (b, h, w) in [0, 1]
    rgb = np.stack([np.interp(t, _CMAP_STOPS, _CMAP_COLOURS[:, c]) for c in range(3)], axis=-1)  # (b, h, w, 3)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def denormalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the input normalisation `(x / 255 - mean) / std`: (b, H, W, 3) float -> uint8 in [0, 255]."""
    images = np.asarray(images, np.float64)
    mean_ = np.asarray(mean, np.float64)
    std_ = np.asarray(std, np.float64)
    return np.clip(np.rint((images * std_ + mean_) * 255.0), 0, 255).astype(np.uint8)


def overlay(images_uint8: np.ndarray, maps: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend colourised attention over the images: -> (b, H, W, 3) uint8.

    Maps (b, h, w[, 1]) are resized to the image size with PIL's bilinear filter (smooth, as attention
    maps are usually shown), then colourised by `colorize` and blended as
    `(1 - alpha) * image + alpha * colour`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    images = _as_images(images_uint8)  # (b, H, W, 3)
    maps = _as_maps(maps)  # (b, h, w)
    _check_batch(images, maps)
    colours = colorize(_resize(maps, images.shape[1:3], Image.Resampling.BILINEAR))  # (b, H, W, 3)
    blended = (1.0 - alpha) * images.astype(np.float64) + alpha * colours.astype(np.float64)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _quantized_gray(quantized: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Quantised maps with values in [0, 1] -> (b, H, W) uint8 `value * 255`, nearest upsampling, no rescaling."""
    up = _resize(np.clip(quantized, 0.0, 1.0), size_hw, Image.Resampling.NEAREST)  # (b, H, W)
    return np.clip(np.rint(up * 255.0), 0, 255).astype(np.uint8)


def _save_png(image: Image.Image, path: epath.Path) -> epath.Path:
    """Encode ``image`` as PNG and write it atomically (local or remote), so readers never see half a file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def grid_size(
    num_examples: int,
    image_hw: tuple[int, int],
    *,
    columns: int = 8,
    scale: int = 4,
    with_text: bool = False,
    with_quantized: bool = False,
) -> tuple[int, int]:
    """(height, width) in pixels of the PNG `save_attention_grid` writes for this layout.

    A cell is 2 tiles (3 with quantised maps) of (H * scale, W * scale) stacked with GRID_PAD between,
    under a GRID_TEXT_HEIGHT strip when labels or predictions are drawn; min(columns, n) cells per row,
    GRID_PAD between cells and around the grid.
    """
    tile_h, tile_w = image_hw[0] * scale, image_hw[1] * scale
    tiles = 3 if with_quantized else 2
    cell_h = (GRID_TEXT_HEIGHT if with_text else 0) + tiles * tile_h + (tiles - 1) * GRID_PAD
    ncols = max(1, min(columns, num_examples))
    nrows = max(1, -(-num_examples // ncols))
    return nrows * cell_h + (nrows + 1) * GRID_PAD, ncols * tile_w + (ncols + 1) * GRID_PAD


def _draw_box(
    draw: ImageDraw.ImageDraw, box: np.ndarray, origin: tuple[int, int], scale: int, tile_hw: tuple[int, int]
) -> None:
    """Outline a [ymin, xmin, ymax, xmax) box (image pixels) on the tile whose top-left corner is `origin` (x, y)."""
    ymin, xmin, ymax, xmax = (float(v) * scale for v in box)
    x0, y0 = origin
    # Exclusive max: the last covered pixel is max * scale - 1; clip to the tile.
    left = x0 + int(np.clip(round(xmin), 0, tile_hw[1] - 1))
    top = y0 + int(np.clip(round(ymin), 0, tile_hw[0] - 1))
    right = x0 + int(np.clip(round(xmax) - 1, 0, tile_hw[1] - 1))
    bottom = y0 + int(np.clip(round(ymax) - 1, 0, tile_hw[0] - 1))
    if right >= left and bottom >= top:
        draw.rectangle((left, top, right, bottom), outline=_BOX_COLOUR, width=max(1, scale // 4))


def _caption(
    labels: Sequence[Any] | None, predictions: Sequence[Any] | None, k: int
) -> tuple[str, tuple[int, int, int]]:
    """Text and colour for example k: green when the prediction equals the label, red when not."""
    if labels is not None and predictions is not None:
        right = bool(labels[k] == predictions[k])
        return f"y={labels[k]} p={predictions[k]}", _TEXT_RIGHT if right else _TEXT_WRONG
    if labels is not None:
        return f"y={labels[k]}", _TEXT_NEUTRAL
    return f"p={predictions[k]}", _TEXT_NEUTRAL


def save_attention_grid(
    path: str | os.PathLike[str],
    images_uint8: np.ndarray,
    maps: np.ndarray,
    **options: Any,
) -> epath.Path:
    """Write `attention_grid`'s contact sheet as one PNG and return its path (local or ``gs://``).

    The file is written atomically (`runtime.atomic`: a temporary sibling renamed over it, or one upload).
    """
    return _save_png(attention_grid(images_uint8, maps, **options), as_path(path))


def examples_grid(examples: dict[str, np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray | None:
    """The contact sheet of an evaluation's kept examples as an (H, W, 3) uint8 array (None without maps).

    `examples` holds normalised `image`s, `attention` maps, `label`, `pred_mc` and optionally `attention_q` and
    `box` (what `evaluate(..., keep_examples=n)` keeps); TensorBoard shows the array as an image.
    """
    if "attention" not in examples or not len(examples.get("image", ())):
        return None
    sheet = attention_grid(denormalize(examples["image"], mean, std), examples["attention"], labels=examples["label"],
                           predictions=examples["pred_mc"], quantized_maps=examples.get("attention_q"),
                           boxes=examples.get("box"))
    return np.asarray(sheet)


def attention_grid(
    images_uint8: np.ndarray,
    maps: np.ndarray,
    *,
    labels: Sequence[Any] | np.ndarray | None = None,
    predictions: Sequence[Any] | np.ndarray | None = None,
    quantized_maps: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    columns: int = 8,
    scale: int = 4,
) -> Image.Image:
    """One contact sheet of a batch as a PIL image.

    Per example, a column cell of tiles: the image, the `overlay` of the continuous map, and (when given)
    the quantised map in grayscale (`value * 255`, nearest, no normalisation, like the official `_q.png`).
    Tiles are upscaled by `scale` with nearest; `boxes` (b, 4) are outlined on the image and overlay tiles;
    labels/predictions are written above each cell (green when equal, red when not). Layout: `grid_size`.
    """
    if columns < 1 or scale < 1:
        raise ValueError(f"columns and scale must be >= 1, got columns={columns}, scale={scale}")
    images = _as_images(images_uint8)  # (b, H, W, 3)
    maps = _as_maps(maps)  # (b, h, w)
    _check_batch(images, maps)
    b, height, width, _ = images.shape
    quantized = None
    if quantized_maps is not None:
        quantized = _as_maps(quantized_maps)
        _check_batch(images, quantized, "quantized_maps")
    if boxes is not None:
        boxes = np.asarray(boxes, np.float64)
        if boxes.shape != (b, 4):
            raise ValueError(f"boxes must have shape ({b}, 4) to match images {images.shape}, got {boxes.shape}")
    for name, seq in (("labels", labels), ("predictions", predictions)):
        if seq is not None and len(seq) != b:
            raise ValueError(f"{name} has {len(seq)} entries for {b} images")

    tiles = [images, overlay(images, maps)]  # each (b, H, W, 3)
    if quantized is not None:
        tiles.append(np.repeat(_quantized_gray(quantized, (height, width))[..., None], 3, axis=-1))
    tiles = [np.repeat(np.repeat(t, scale, axis=1), scale, axis=2) for t in tiles]  # (b, H*scale, W*scale, 3)
    tile_h, tile_w = height * scale, width * scale

    with_text = labels is not None or predictions is not None
    text_h = GRID_TEXT_HEIGHT if with_text else 0
    grid_h, grid_w = grid_size(
        b, (height, width), columns=columns, scale=scale, with_text=with_text, with_quantized=quantized is not None
    )
    ncols = max(1, min(columns, b))
    cell_h = text_h + len(tiles) * tile_h + (len(tiles) - 1) * GRID_PAD

    canvas = np.empty((grid_h, grid_w, 3), np.uint8)
    canvas[:] = _BACKGROUND
    origins = []  # (x, y) of each cell's first tile
    for k in range(b):
        row, col = divmod(k, ncols)
        x = GRID_PAD + col * (tile_w + GRID_PAD)
        y = GRID_PAD + row * (cell_h + GRID_PAD) + text_h
        for t, tile in enumerate(tiles):
            ty = y + t * (tile_h + GRID_PAD)
            canvas[ty : ty + tile_h, x : x + tile_w] = tile[k]
        origins.append((x, y))

    sheet = Image.fromarray(canvas)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default() if with_text else None
    for k, (x, y) in enumerate(origins):
        if boxes is not None:
            for t in range(2):  # the image and the overlay tiles
                _draw_box(draw, boxes[k], (x, y + t * (tile_h + GRID_PAD)), scale, (tile_h, tile_w))
        if with_text:
            text, colour = _caption(labels, predictions, k)
            draw.text((x + 1, y - text_h + 1), text, fill=colour, font=font)
    return sheet


def save_attention_maps(
    dir: str | os.PathLike[str],
    images_uint8: np.ndarray,
    maps: np.ndarray,
    *,
    quantized_maps: np.ndarray | None = None,
    prefix: str = "test",
) -> list[epath.Path]:
    """Write per-image PNGs named like the official dumps into ``dir`` (local or ``gs://``) and return their
    paths (in writing order).

    For example idx: `{prefix}_{idx:04d}.png` (the image), `{prefix}_{idx:04d}_att00.png` (the continuous
    map bilinear-resized to the image size, then min-max scaled to 0..255 so it spans the full range,
    grayscale) and, with quantised maps, `{prefix}_{idx:04d}_att00_q.png` (`value * 255`, nearest, no
    normalisation). Each file is written atomically.
    """
    images = _as_images(images_uint8)  # (b, H, W, 3)
    maps = _as_maps(maps)  # (b, h, w)
    _check_batch(images, maps)
    size_hw = images.shape[1:3]
    continuous = _minmax(_resize(maps, size_hw, Image.Resampling.BILINEAR))  # (b, H, W) in [0, 1]
    continuous = np.clip(np.rint(continuous * 255.0), 0, 255).astype(np.uint8)
    quantized = None
    if quantized_maps is not None:
        q = _as_maps(quantized_maps)
        _check_batch(images, q, "quantized_maps")
        quantized = _quantized_gray(q, size_hw)  # (b, H, W)

    out_dir = as_path(dir)
    written: list[epath.Path] = []
    for idx in range(images.shape[0]):
        stem = f"{prefix}_{idx:04d}"
        written.append(_save_png(Image.fromarray(images[idx]), out_dir / f"{stem}.png"))
        written.append(_save_png(Image.fromarray(continuous[idx]), out_dir / f"{stem}_att00.png"))
        if quantized is not None:
            written.append(_save_png(Image.fromarray(quantized[idx]), out_dir / f"{stem}_att00_q.png"))
    return written
