"""Pure generation of the `cluttered_digits` images from scikit-learn's handwritten digits.

Each example is a 32x32 RGB canvas holding one digit scaled to 12-16 px at a random position, plus 4-6
distractor fragments cut from digits of *other* classes. The fragments look like strokes, so a classifier has
to find the whole digit among them (a task for spatial attention), and the digit's box is known exactly (a
ground truth for whether an attention map finds the object).

Everything here is a deterministic function of a `np.random.Generator`; the TFDS builder in
`cluttered_digits.py` only decides which generator and which source digits each example gets. A
`ClutterStyle` holds the knobs (digit scale, number of fragments, colours, noise): `DEFAULT_STYLE` makes
`cluttered_digits`, `SHIFTED_STYLE` its domain-shifted variant `cluttered_digits_shifted`.

Boxes are int32 `[ymin, xmin, ymax, xmax]` in canvas pixels with exclusive ends (numpy slice convention):
the digit occupies `canvas[ymin:ymax, xmin:xmax]`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

CANVAS_SIZE = 32
DIGIT_SIZES = (12, 16)  # inclusive range of the scaled digit's side, pixels
NUM_FRAGMENTS = (4, 6)  # inclusive range of distractor fragments per image
FRAGMENT_CROP = (4, 6)  # inclusive range of a fragment crop's side in the 8x8 source digit
FRAGMENT_SCALE = 2  # fragments are scaled x2 (so 8-12 px on the canvas)
MAX_FRAGMENT_OVERLAP = 0.2  # at most this fraction of a fragment's area may lie over the digit's box
MIN_FRAGMENT_INK = 4  # a crop with fewer source pixels above half intensity is redrawn (nearly empty)
MAX_REDRAWS = 50  # then the inkiest crop seen is used
INK_THRESHOLD = 0.25  # a scaled-digit pixel above this intensity (of 1) is ink for the tight box
NOISE_STD = 0.06  # Gaussian pixel noise, in units of the 0..1 intensity
BACKGROUND_RANGE = (0.0, 0.35)  # per-channel background colour
FOREGROUND_RANGE = (0.6, 1.0)  # per-channel ink colour (the tint)
SCALED_SIZES = range(8, 17)  # digit sides precomputed in SourceDigits.scaled (every style's range lies inside)


@dataclasses.dataclass(frozen=True)
class ClutterStyle:
    """How an example looks: the digit's scale, how many distractors, the colours and the noise.

    Ranges are inclusive (low, high). Fragments are always 4-6 px crops scaled x2 (8-12 px on the canvas).
    """

    digit_sizes: tuple[int, int] = DIGIT_SIZES
    num_fragments: tuple[int, int] = NUM_FRAGMENTS
    noise_std: float = NOISE_STD
    background_range: tuple[float, float] = BACKGROUND_RANGE
    foreground_range: tuple[float, float] = FOREGROUND_RANGE

    def __post_init__(self) -> None:
        low, high = self.digit_sizes
        if not (SCALED_SIZES.start <= low <= high < SCALED_SIZES.stop):
            raise ValueError(f"digit_sizes {self.digit_sizes} must lie within [{SCALED_SIZES.start}, "
                             f"{SCALED_SIZES.stop - 1}] (12 px fragments must fit beside the digit)")
        if not 0 <= self.num_fragments[0] <= self.num_fragments[1]:
            raise ValueError(f"num_fragments {self.num_fragments} must be a range 0 <= low <= high")


DEFAULT_STYLE = ClutterStyle()  # cluttered_digits
# cluttered_digits_shifted: smaller digits among as many distractors of the same size, brighter backgrounds
# with less contrast to the ink, stronger noise. Same digits' classes, a different image distribution.
SHIFTED_STYLE = ClutterStyle(digit_sizes=(9, 11), num_fragments=(7, 9), noise_std=0.09,
                             background_range=(0.25, 0.45), foreground_range=(0.65, 0.95))


@dataclasses.dataclass(frozen=True)
class ClutteredExample:
    """One generated example. image: (32, 32, 3) uint8; boxes: (4,) int32 [ymin, xmin, ymax, xmax]."""

    image: np.ndarray
    box: np.ndarray
    ink_box: np.ndarray


@dataclasses.dataclass(frozen=True)
class SourceDigits:
    """The source digits and their resized copies, computed once so that generating an example is cheap.

    images: (N, 8, 8) float32 in [0, 1]; labels: (N,) int64; scaled[s]: (N, s, s) for each s in SCALED_SIZES;
    doubled: (N, 16, 16), the x2 copies fragments are cut from; ink: (N, 8, 8) bool, source pixels above 0.5.
    """

    images: np.ndarray
    labels: np.ndarray
    scaled: dict[int, np.ndarray]
    doubled: np.ndarray
    ink: np.ndarray


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of PIL's bilinear resize along one axis, read off resized unit vectors."""
    eye = Image.fromarray(np.eye(in_size, dtype=np.float32), mode="F")  # row i: unit vector e_i
    return np.asarray(eye.resize((out_size, in_size), Image.Resampling.BILINEAR), np.float32).T


def resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of float32 (N, h, w) images to (N, size, size), as PIL's mode 'F' resize of each."""
    rows, cols = bilinear_matrix(images.shape[1], size), bilinear_matrix(images.shape[2], size)
    return np.einsum("sh,nhw,tw->nst", rows, images, cols).astype(np.float32)


@functools.cache
def load_source_digits() -> SourceDigits:
    """The 1,797 scikit-learn digits (intensities 0..16 mapped to [0, 1]) with their resized copies."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8)
    scaled = {s: resize_stack(images, s) for s in SCALED_SIZES}
    doubled = resize_stack(images, 8 * FRAGMENT_SCALE)
    return SourceDigits(images, digits.target.astype(np.int64), scaled, doubled, images > 0.5)


def split_source_indices(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified train/test sets of source-digit indices (sorted int64 arrays).

    Train and test examples are drawn only from their own set (digits *and* fragments), so no source digit
    appears in both splits.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def ink_box(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Tight int32 [ymin, xmin, ymax, xmax] (exclusive ends) of the True pixels of a (h, w) mask, shifted."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return np.array([offset[0], offset[1], offset[0], offset[1]], np.int32)
    return np.array(
        [rows[0] + offset[0], cols[0] + offset[1], rows[-1] + 1 + offset[0], cols[-1] + 1 + offset[1]],
        np.int32,
    )


class UniformStream:
    """Integers from a `np.random.Generator`, drawn in blocks of 64 (numpy calls are slow per scalar)."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._block: list[float] = []

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high) (high exclusive)."""
        if not self._block:
            self._block = self._rng.random(64).tolist()
        return low + int(self._block.pop() * (high - low))


def overlap_area(box: tuple[int, int, int, int], y: int, x: int, height: int, width: int) -> int:
    """Overlap area of `box` with the (height, width) rectangle whose top-left corner is (y, x)."""
    dy = min(y + height, box[2]) - max(y, box[0])
    dx = min(x + width, box[3]) - max(x, box[1])
    return max(dy, 0) * max(dx, 0)


def sample_fragment(stream: UniformStream, digits: SourceDigits, index: int) -> np.ndarray:
    """A 4-6 px crop of source digit `index`, redrawn while nearly empty, scaled x2: (2h, 2w) float32.

    The x2 scaling is read from the precomputed x2 copy of the whole digit (same pixels as scaling the crop,
    except for bilinear interpolation at the crop's border).
    """
    best, best_ink = (4, 4, 0, 0), -1
    for _ in range(MAX_REDRAWS):
        h = stream.integer(FRAGMENT_CROP[0], FRAGMENT_CROP[1] + 1)
        w = stream.integer(FRAGMENT_CROP[0], FRAGMENT_CROP[1] + 1)
        y, x = stream.integer(0, 8 - h + 1), stream.integer(0, 8 - w + 1)
        ink = int(digits.ink[index, y : y + h, x : x + w].sum())
        if ink > best_ink:
            best, best_ink = (h, w, y, x), ink
        if ink >= MIN_FRAGMENT_INK:
            break
    h, w, y, x = (FRAGMENT_SCALE * v for v in best)
    return digits.doubled[index, y : y + h, x : x + w]


def place_fragment(
    stream: UniformStream, height: int, width: int, digit_box: tuple[int, int, int, int]
) -> tuple[int, int]:
    """A uniformly drawn top-left corner at which at most 20% of a fragment lies over `digit_box`.

    Rejection sampling; a 12 px fragment always fits beside a 16 px digit, so it ends.
    """
    limit = MAX_FRAGMENT_OVERLAP * height * width
    while True:
        y = stream.integer(0, CANVAS_SIZE - height + 1)
        x = stream.integer(0, CANVAS_SIZE - width + 1)
        if overlap_area(digit_box, y, x, height, width) <= limit:
            return y, x


def colourise(rng: np.random.Generator, intensity: np.ndarray, style: ClutterStyle = DEFAULT_STYLE) -> np.ndarray:
    """Random background and ink colours, Gaussian noise: (h, w) float in [0, 1] -> (h, w, 3) uint8."""
    background = rng.uniform(*style.background_range, size=3).astype(np.float32)
    foreground = rng.uniform(*style.foreground_range, size=3).astype(np.float32)
    rgb = intensity[..., None] * (255.0 * (foreground - background))  # (h, w, 3) float32
    rgb += 255.0 * background
    rgb += rng.standard_normal(size=rgb.shape, dtype=np.float32) * np.float32(255.0 * style.noise_std)
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return np.rint(rgb, out=rgb).astype(np.uint8)


def make_example(
    rng: np.random.Generator,
    digits: SourceDigits,
    index: int,
    fragment_indices: np.ndarray,
    style: ClutterStyle = DEFAULT_STYLE,
) -> ClutteredExample:
    """Composes one example from source digit `index` and fragments of digits `fragment_indices`.

    `fragment_indices` holds at least `style.num_fragments[1]` sources; the number used is drawn from `rng`.
    Fragments are composited by maximum so they never hide the digit's strokes.
    """
    stream = UniformStream(rng)
    size = stream.integer(style.digit_sizes[0], style.digit_sizes[1] + 1)
    y0, x0 = stream.integer(0, CANVAS_SIZE - size + 1), stream.integer(0, CANVAS_SIZE - size + 1)
    scaled = digits.scaled[size][index]  # (size, size)
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), np.float32)
    canvas[y0 : y0 + size, x0 : x0 + size] = scaled
    box = np.array([y0, x0, y0 + size, x0 + size], np.int32)
    tight = ink_box(scaled > INK_THRESHOLD, (y0, x0))

    num_fragments = stream.integer(style.num_fragments[0], style.num_fragments[1] + 1)
    for source in fragment_indices[:num_fragments]:
        fragment = sample_fragment(stream, digits, int(source))
        h, w = fragment.shape
        fy, fx = place_fragment(stream, h, w, (y0, x0, y0 + size, x0 + size))
        np.maximum(canvas[fy : fy + h, fx : fx + w], fragment, out=canvas[fy : fy + h, fx : fx + w])

    return ClutteredExample(colourise(rng, np.clip(canvas, 0.0, 1.0), style), box, tight)


def generate(
    rng: np.random.Generator, digits: SourceDigits, pool: np.ndarray, style: ClutterStyle = DEFAULT_STYLE
) -> tuple[ClutteredExample, int, int]:
    """Draws a source digit from `pool` and fragment sources of other classes from the same pool.

    Returns the example, its label and the index of its source digit.
    """
    index = int(pool[rng.integers(len(pool))])
    label = int(digits.labels[index])
    others = pool[digits.labels[pool] != label]
    fragment_indices = others[rng.integers(len(others), size=style.num_fragments[1])]
    return make_example(rng, digits, index, fragment_indices, style=style), label, index
