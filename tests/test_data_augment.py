"""The pure augmentation functions against numpy references on known inputs."""

import numpy as np
import pytest

from ib_attention_jax.data import augment


def ramp(h: int, w: int, c: int = 3) -> np.ndarray:
    """(h, w, c) uint8 with distinct values, so every misplaced pixel shows."""
    return (np.arange(h * w * c).reshape(h, w, c) % 251).astype(np.uint8)


def nonzero_box(image: np.ndarray) -> list[int]:
    """[ymin, xmin, ymax, xmax] (exclusive) of the pixels that are not zero."""
    rows, cols = np.flatnonzero(image.any(axis=(1, 2))), np.flatnonzero(image.any(axis=(0, 2)))
    return [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]


def test_reflect_pad_mirrors_without_repeating_the_edge():
    image = np.arange(4, dtype=np.uint8).reshape(1, 4, 1).repeat(3, axis=0)  # rows of 0 1 2 3
    padded = augment.reflect_pad(image, 2)
    assert padded.shape == (7, 8, 1)
    np.testing.assert_array_equal(padded[2, :, 0], [2, 1, 0, 1, 2, 3, 2, 1])  # torch padding_mode='reflect'


@pytest.mark.parametrize("size,pad", [(32, 4), (96, 12), (5, 4)])
def test_reflect_indices_match_np_pad(size, pad):
    reference = np.pad(np.arange(size), pad, mode="reflect")
    for start in range(-pad, pad + 1):
        np.testing.assert_array_equal(
            augment.reflect_indices(start, size, size), reference[start + pad :][:size]
        )


def test_pad_and_random_crop_equals_crop_of_padded_image():
    image = ramp(32, 32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = set()
    for seed in range(300):
        out, (top, left) = augment.pad_and_random_crop(image, np.random.default_rng(seed), 4)
        np.testing.assert_array_equal(out, padded[top : top + 32, left : left + 32])
        offsets.add((top, left))
    assert {t for t, _ in offsets} == set(range(9)) and {le for _, le in offsets} == set(range(9))


def test_random_crop_offsets_are_uniform_and_inclusive():
    rng = np.random.default_rng(0)
    tops = [augment.random_crop_offsets(rng, (256, 256), (224, 224))[0] for _ in range(4000)]
    assert min(tops) == 0 and max(tops) == 32
    assert abs(np.mean(tops) - 16) < 0.5


@pytest.mark.parametrize(
    "in_size,out_size,expected",
    [
        ((256, 256), (224, 224), (16, 16)),
        (
            (7, 9),
            (4, 4),
            (2, 2),
        ),  # round(1.5) = 2, round(2.5) = 2: Python rounding, as torchvision's CenterCrop
        ((10, 10), (10, 10), (0, 0)),
    ],
)
def test_center_crop_offsets_follow_torchvision(in_size, out_size, expected):
    assert augment.center_crop_offsets(in_size, out_size) == expected


def test_center_crop_and_crop():
    image = ramp(256, 300)
    np.testing.assert_array_equal(augment.center_crop(image, 224), image[16:240, 38:262])
    np.testing.assert_array_equal(augment.crop(image, 3, 5, 10, 20), image[3:13, 5:25])
    with pytest.raises(ValueError):
        augment.crop(image, 250, 0, 10, 10)


def test_flip_and_random_flip():
    image = ramp(4, 5)
    np.testing.assert_array_equal(augment.flip_left_right(image), image[:, [4, 3, 2, 1, 0]])
    flags = []
    for seed in range(400):
        out, flipped = augment.random_flip(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image[:, ::-1] if flipped else image)
        flags.append(flipped)
    assert 0.4 < np.mean(flags) < 0.6


def test_normalize_is_totensor_then_normalize():
    image = ramp(6, 7)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = (image / 255.0 - np.array(mean)) / np.array(std)
    out = augment.normalize(image, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def pil_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of PIL's bilinear resampling: a triangle filter widened by the downscale factor."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for x in range(out_size):
        center = (x + 0.5) * scale
        lo = max(int(center - filter_scale + 0.5), 0)
        hi = min(int(center + filter_scale + 0.5), in_size)
        k = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((k - center + 0.5) / filter_scale), 0.0, None)
        weights[x, lo:hi] = w / w.sum()
    return weights


def reference_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable resize, horizontal pass first with uint8 rounding in between, as PIL does."""
    horizontal = np.einsum(
        "ow,hwc->hoc", pil_bilinear_matrix(image.shape[1], width), image.astype(np.float64)
    )
    horizontal = np.clip(np.rint(horizontal), 0, 255)
    vertical = np.einsum("oh,hwc->owc", pil_bilinear_matrix(image.shape[0], height), horizontal)
    return np.clip(np.rint(vertical), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "in_shape,out_shape", [((375, 500), (256, 256)), ((61, 47), (256, 256)), ((40, 30), (17, 23))]
)
def test_resize_bilinear_matches_antialiased_bilinear_reference(in_shape, out_shape):
    image = np.random.default_rng(1).integers(0, 256, size=(*in_shape, 3), dtype=np.uint8)
    out = augment.resize_bilinear(image, *out_shape)
    assert out.shape == (*out_shape, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - reference_resize(image, *out_shape).astype(int))
    assert diff.max() <= 1  # PIL's fixed-point coefficients


def test_resize_keeps_constants_and_identity():
    image = np.full((50, 70, 3), 77, np.uint8)
    np.testing.assert_array_equal(augment.resize_bilinear(image, 256, 256), 77)
    ramp_image = ramp(9, 9)
    assert augment.resize_bilinear(ramp_image, 9, 9) is ramp_image
    grey = ramp(20, 30, 1)
    assert augment.resize_bilinear(grey, 10, 15).shape == (10, 15, 1)


def test_box_to_pixels_rounds_like_pil_crop_and_stays_inside():
    h, w = 375, 500
    box = np.array([60 / h, 27 / w, 325 / h, 304 / w], np.float32)  # CUB's (x, y, w, h) = (27, 60, 277, 265)
    assert augment.box_to_pixels(box, h, w) == (60, 27, 325, 304)
    assert augment.box_to_pixels(np.array([0.5, 0.5, 0.1, 0.2]), 10, 10) == (1, 2, 5, 5)  # inverted: sorted
    assert augment.box_to_pixels(np.array([1.0, 1.0, 1.0, 1.0]), 10, 10) == (9, 9, 10, 10)  # empty: one pixel
    assert augment.box_to_pixels(np.array([-0.2, 0.0, 1.3, 1.0]), 10, 10) == (0, 0, 10, 10)
    assert augment.round_box(np.array([2.5, 3.5, 7.5, 8.4]), 10, 10) == (2, 4, 8, 8)


def test_crop_to_box_is_the_box_window():
    image = ramp(375, 500)
    box = np.array([60 / 375, 27 / 500, 325 / 375, 304 / 500])
    np.testing.assert_array_equal(augment.crop_to_box(image, box), image[60:325, 27:304])


def test_box_transforms_follow_the_pixels():
    size, pad = 32, 4
    image = np.zeros((size, size, 3), np.uint8)
    box = np.array([7, 9, 20, 25])
    image[7:20, 9:25] = 255
    for seed in range(50):
        out, (top, left) = augment.pad_and_random_crop(image, np.random.default_rng(seed), pad)
        moved = augment.clip_box(augment.shift_box(box, pad - top, pad - left), size, size)
        assert nonzero_box(out) == moved.astype(int).tolist()
    flipped = augment.flip_box(box, size)
    assert nonzero_box(augment.flip_left_right(image)) == flipped.astype(int).tolist()
    big = np.zeros((40, 60, 3), np.uint8)
    big[10:30, 12:48] = 255
    resized = augment.resize_bilinear(big, 20, 30)
    scaled = augment.scale_box(np.array([10, 12, 30, 48]), 0.5, 0.5)
    assert nonzero_box(resized > 127) == scaled.astype(int).tolist()
