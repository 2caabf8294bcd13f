"""Deletion and insertion scores of attention maps, and anchor statistics of QT models (pure numpy).

Deletion (Petsiuk et al., RISE, 2018): remove the image's pixels in the order of the attention map, the most
attended first, and follow the classifier's probability of the true class as the removed fraction goes from
0 to 1; the area under that curve is low when the map puts the evidence first. Insertion reveals the pixels
of a blank image in the same order; its area is high when the map's first pixels suffice. Neither needs
boxes, so they score maps on any dataset. Both depend on how much the classifier relies on few pixels at
all, so they are read against the same procedure with a random map (`random_maps`): attention helps where
deletion falls below and insertion rises above the random order.

Protocol (the official code has none; these are this library's choices):

- the map is the model's attention mean at map resolution (b, h, w); each map cell covers an (S/h) x (S/w)
  block of the S x S image (nearest-neighbour, as `localization.upsample_map`; non-divisible sizes use the
  cell whose span holds the pixel centre), so pixels are removed cell by cell in map order;
- ties (a uniform map, the pixels inside one cell, equal anchors of a quantised map) are broken in a random
  order drawn from `rng`, so a uniform map scores as the random order does;
- the random baseline is a map of i.i.d. uniform values at the same resolution: the same cell granularity;
- a removed pixel takes the baseline image's value: `"mean"` is 0 in the normalised input, i.e. the
  dataset's mean colour; `"blur"` is a Gaussian blur of the image (sigma = S / 16 pixels), RISE's choice
  for insertion;
- `steps` + 1 fractions 0, 1/steps, ..., 1 of the S * S pixels (rounded to whole pixels); the area is the
  trapezoidal integral over the fraction actually removed, so it lies in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ib_attention_jax.evaluation.localization import as_maps

__all__ = ["BASELINES", "CurveSet", "anchor_statistics", "baseline_images", "curve_auc", "deletion_insertion",
           "nearest_anchor_index", "pixel_ranks", "random_maps", "removal_counts", "upsample_nearest"]

BASELINES = ("mean", "blur")
CURVES = ("deletion", "insertion", "deletion_random", "insertion_random")

# (n, S, S, 3) normalised images and (n,) labels -> (n,) true-class probabilities.
ProbabilityFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _nearest_cells(map_size: int, image_size: int) -> np.ndarray:
    """(S,) map index of each image row (or column): the cell whose span holds the pixel centre."""
    return np.minimum(((np.arange(image_size) + 0.5) * map_size / image_size).astype(np.int64), map_size - 1)


def upsample_nearest(maps: np.ndarray, image_size: int) -> np.ndarray:
    """(b, h, w) -> (b, S, S) by nearest cell; for S divisible by h and w this is exact block replication."""
    maps = as_maps(maps)
    _, h, w = maps.shape
    return maps[:, _nearest_cells(h, image_size)][:, :, _nearest_cells(w, image_size)]


def pixel_ranks(maps: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """(b, S*S) int rank of each pixel (row-major) in removal order: 0 = the most attended; ties random."""
    values = upsample_nearest(maps, image_size).reshape(len(maps), -1)  # (b, P)
    ties = rng.random(values.shape)  # (b, P)
    order = np.lexsort((ties, -values), axis=-1)  # (b, P): pixel indices, most attended first
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    return ranks


def random_maps(batch: int, map_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(b, h, w) i.i.d. uniform maps: the random order the map order is read against."""
    return rng.random((batch, *map_hw))


def removal_counts(num_pixels: int, steps: int) -> np.ndarray:
    """(steps + 1,) pixels removed (or revealed) at each step: round(k / steps * num_pixels)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.rint(np.arange(steps + 1) / steps * num_pixels).astype(np.int64)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (b, S, S, c) images, reflecting at the borders."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    out = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return out.astype(images.dtype)


def baseline_images(images: np.ndarray, kind: str = "mean") -> np.ndarray:
    """What removed pixels become, (b, S, S, c): 0 (the normalised mean colour) or a blurred copy."""
    if kind == "mean":
        return np.zeros_like(images)
    if kind == "blur":
        return _blur(images, images.shape[1] / 16.0)
    raise ValueError(f"unknown deletion/insertion baseline {kind!r}; choose one of {BASELINES}")


def curve_auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoidal area under (..., steps + 1) curves over `fractions` (steps + 1,) -> (...)."""
    curves = np.asarray(curves, np.float64)
    widths = np.diff(fractions)  # (steps,)
    return np.sum(widths * (curves[..., 1:] + curves[..., :-1]) / 2.0, axis=-1)


@dataclasses.dataclass
class CurveSet:
    """True-class probability per example and step for each curve; fractions: (steps + 1,) removed share."""

    fractions: np.ndarray  # (steps + 1,)
    curves: dict[str, np.ndarray]  # name in CURVES -> (n, steps + 1)

    def auc(self) -> dict[str, np.ndarray]:
        """Per-example areas, name -> (n,)."""
        return {name: curve_auc(c, self.fractions) for name, c in self.curves.items()}


def deletion_insertion(probability: ProbabilityFn, images: np.ndarray, labels: np.ndarray, maps: np.ndarray,
                       *, steps: int = 16, baseline: str = "mean", rng: np.random.Generator | None = None,
                       with_random: bool = True) -> CurveSet:
    """Deletion and insertion curves of `maps` (and of random maps) for normalised `images`.

    images: (n, S, S, c); labels: (n,); maps: (n, h, w[, 1]). `probability(images, labels)` returns the
    true-class probability (n,) of each image; it is called once per step and curve with all n images.
    Endpoints are shared: deletion at 0 and insertion at 1 see the image itself, deletion at 1 and insertion
    at 0 the baseline.
    """
    images = np.asarray(images)
    maps = as_maps(maps)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (n, S, S, c), got {images.shape}")
    n, size = images.shape[0], images.shape[1]
    if maps.shape[0] != n or len(labels) != n:
        raise ValueError(f"images {images.shape}, labels ({len(labels)},) and maps {maps.shape} disagree in length")
    rng = np.random.default_rng(0) if rng is None else rng
    blank = baseline_images(images, baseline)
    counts = removal_counts(size * size, steps)
    fractions = counts / float(size * size)
    full, empty = probability(images, labels), probability(blank, labels)
    orders = {"": pixel_ranks(maps, size, rng)}
    if with_random:
        orders["_random"] = pixel_ranks(random_maps(n, maps.shape[1:], rng), size, rng)
    curves: dict[str, np.ndarray] = {}
    for suffix, ranks in orders.items():
        deletion = np.empty((n, steps + 1))
        insertion = np.empty((n, steps + 1))
        deletion[:, 0], deletion[:, -1] = full, empty
        insertion[:, 0], insertion[:, -1] = empty, full
        for k in range(1, steps):
            first = (ranks < counts[k]).reshape(n, size, size, 1)  # (n, S, S, 1): the first counts[k] pixels
            deletion[:, k] = probability(np.where(first, blank, images), labels)
            insertion[:, k] = probability(np.where(first, images, blank), labels)
        curves["deletion" + suffix], curves["insertion" + suffix] = deletion, insertion
    return CurveSet(fractions=fractions, curves=curves)


def anchor_statistics(usage: np.ndarray, anchors: np.ndarray) -> dict[str, object]:
    """Usage histogram (Q,) of anchors (Q,) -> anchors used, perplexity exp(H(usage)), values and shares."""
    usage = np.asarray(usage, np.float64)
    anchors = np.asarray(anchors, np.float64)
    if usage.shape != anchors.shape or usage.ndim != 1:
        raise ValueError(f"usage {usage.shape} and anchors {anchors.shape} must be (Q,) each")
    total = usage.sum()
    p = usage / total if total > 0 else np.zeros_like(usage)
    nz = p[p > 0]
    return {"anchors_used": int(np.sum(usage > 0)), "anchor_perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
            "anchor_values": anchors.tolist(), "anchor_usage": p.tolist(), "num_anchors": int(len(anchors))}


def nearest_anchor_index(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Index of the nearest anchor of each value by squared distance, first on ties (the quantiser's rule)."""
    values = np.asarray(values, np.float32)
    return np.argmin(np.square(values[..., None] - np.asarray(anchors, np.float32)), axis=-1)
