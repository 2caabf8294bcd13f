"""Image augmentation and preprocessing as pure numpy functions (one example at a time, HWC).

They mirror the torchvision transforms of the official code (METHOD.md section 4) and take their randomness
as an explicit `np.random.Generator` or explicit offsets, so each can be tested against a reference on known
inputs. Boxes are float `[ymin, xmin, ymax, xmax]` in pixel-edge coordinates (pixel i spans [i, i + 1]) unless
a function says they are normalised to [0, 1] (tfds `BBoxFeature`).

Resizing uses PIL's bilinear filter on uint8 images: exactly what torchvision's `Resize` does on the PIL
images of the official CUB loader (bilinear, antialiased when downscaling, i.e. the filter support grows
with the scale factor).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def reflect_pad(image: np.ndarray, pad: int) -> np.ndarray:
    """(h, w, c) -> (h + 2 pad, w + 2 pad, c), mirrored without repeating the edge (torch 'reflect')."""
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")


def crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """(h, w, c) -> (height, width, c) window whose top-left pixel is (top, left)."""
    if top < 0 or left < 0 or top + height > image.shape[0] or left + width > image.shape[1]:
        raise ValueError(f"crop {(top, left, height, width)} outside an image of shape {image.shape}")
    return image[top : top + height, left : left + width]


def random_crop_offsets(
    rng: np.random.Generator, in_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[int, int]:
    """Uniform (top, left) with 0 <= top <= h - out_h, like torchvision's RandomCrop."""
    top = int(rng.integers(0, in_size[0] - out_size[0] + 1))
    left = int(rng.integers(0, in_size[1] - out_size[1] + 1))
    return top, left


def center_crop_offsets(in_size: tuple[int, int], out_size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop: round((h - out_h) / 2)."""
    return int(round((in_size[0] - out_size[0]) / 2.0)), int(round((in_size[1] - out_size[1]) / 2.0))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, c) -> (size, size, c) centre window."""
    top, left = center_crop_offsets(image.shape[:2], (size, size))
    return crop(image, top, left, size, size)


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Source indices of positions start..start+length-1 of an axis of `size` extended by reflection.

    Position -1 reads 1 and position `size` reads size - 2 (np.pad 'reflect'); valid within size - 1 of
    the edge.
    """
    idx = np.abs(np.arange(start, start + length))
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def pad_and_random_crop(
    image: np.ndarray, rng: np.random.Generator, pad: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """RandomCrop(size, padding=pad, padding_mode='reflect'): (h, w, c) -> (h, w, c) and the (top, left) used.

    The offsets are in the padded image, so the content moved by (pad - top, pad - left). Same pixels as
    `crop(reflect_pad(image, pad), top, left, h, w)`, read by index without building the padded image.
    """
    h, w = image.shape[:2]
    top, left = random_crop_offsets(rng, (h + 2 * pad, w + 2 * pad), (h, w))
    rows = reflect_indices(top - pad, h, h)
    cols = reflect_indices(left - pad, w, w)
    return image[rows[:, None], cols[None, :]], (top, left)


def flip_left_right(image: np.ndarray) -> np.ndarray:
    """(h, w, c) mirrored along the width."""
    return image[:, ::-1]


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> tuple[np.ndarray, bool]:
    """RandomHorizontalFlip(p): the image, flipped with probability p, and whether it was."""
    flipped = bool(rng.random() < p)
    return (flip_left_right(image) if flipped else image), flipped


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """ToTensor + Normalize: uint8 (h, w, c) -> float32 (x / 255 - mean) / std."""
    mean_ = np.asarray(mean, np.float32) * 255.0
    scale = 1.0 / (np.asarray(std, np.float32) * 255.0)
    return (image.astype(np.float32) - mean_) * scale


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, c) -> (height, width, c) with PIL bilinear (antialiased), as torchvision Resize on PIL."""
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
    return out[..., None] if channels == 1 else out


def round_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel [ymin, xmin, ymax, xmax] -> integer (top, left, bottom, right) inside the image, exclusive ends.

    Rounds like PIL's `Image.crop`, which the official CUB_crop loader applies to the (x, y, w, h) boxes of
    CUB's bounding_boxes.txt; sorts inverted coordinates, clips to the image and keeps at least one pixel, so
    any box, even a degenerate one, crops.
    """
    y0, y1 = sorted((float(box[0]), float(box[2])))
    x0, x1 = sorted((float(box[1]), float(box[3])))
    top, left = min(max(round(y0), 0), height - 1), min(max(round(x0), 0), width - 1)
    bottom, right = max(min(round(y1), height), top + 1), max(min(round(x1), width), left + 1)
    return top, left, bottom, right


def box_to_pixels(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Normalised [ymin, xmin, ymax, xmax] (tfds BBoxFeature) -> `round_box` of its pixel coordinates."""
    scaled = np.asarray(box, np.float64) * np.array([height, width, height, width], np.float64)
    return round_box(scaled, height, width)


def crop_to_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(h, w, c) -> the window of the normalised box (the official `CUB_crop`)."""
    top, left, bottom, right = box_to_pixels(box, *image.shape[:2])
    return image[top:bottom, left:right]


def shift_box(box: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Pixel box moved by (dy, dx) (a crop at (top, left) is a shift by (-top, -left))."""
    return np.asarray(box, np.float32) + np.array([dy, dx, dy, dx], np.float32)


def scale_box(box: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Pixel box after resizing the image by factors (sy, sx)."""
    return np.asarray(box, np.float32) * np.array([sy, sx, sy, sx], np.float32)


def flip_box(box: np.ndarray, width: int) -> np.ndarray:
    """Pixel box after mirroring an image of the given width."""
    box = np.asarray(box, np.float32)
    return np.array([box[0], width - box[3], box[2], width - box[1]], np.float32)


def clip_box(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel box clipped to an image of shape (height, width)."""
    return np.clip(np.asarray(box, np.float32), 0.0, np.array([height, width, height, width], np.float32))
