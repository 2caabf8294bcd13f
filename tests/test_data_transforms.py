"""Per-example preprocessing of each recipe against the same steps composed by hand."""

import dataclasses

import numpy as np
import pytest

from ib_attention_jax.data import augment, transforms
from ib_attention_jax.data.recipes import NORMALIZATIONS, RECIPES, get_recipe


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_recipes_hold_the_official_constants():
    assert (
        RECIPES["cifar10"].mean_std
        == NORMALIZATIONS["cifar10"]
        == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    )
    assert RECIPES["cifar100"].mean_std == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert get_recipe("svhn_cropped").mean_std == ((0.5,) * 3, (0.5,) * 3)
    cub = get_recipe("caltech_birds2011")
    assert (cub.image_size, cub.resize_size, cub.num_classes) == (224, 256, 200)
    assert cub.mean_std == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match="unknown dataset"):
        get_recipe("imagenet")


def test_cifar_train_is_pad_crop_flip_normalize():
    recipe = RECIPES["cifar10"]
    image = photo(32, 32)
    for seed in range(20):
        out = transforms.preprocess({"image": image, "label": 7}, recipe, rng=np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        expected, _ = augment.pad_and_random_crop(image, rng, 4)
        expected, _ = augment.random_flip(expected, rng)
        np.testing.assert_array_equal(out["image"], augment.normalize(expected, *recipe.mean_std))
        assert out["label"] == 7 and out["label"].dtype == np.int32 and "box" not in out


def test_cifar_eval_is_normalize_only_and_resizes_other_sizes():
    recipe = RECIPES["cifar100"]
    image = photo(32, 32)
    out = transforms.preprocess({"image": image, "label": 3}, recipe)
    np.testing.assert_array_equal(out["image"], augment.normalize(image, *recipe.mean_std))
    stl = photo(96, 96)
    out = transforms.preprocess({"image": stl, "label": 3}, RECIPES["stl10"], image_size=32)
    np.testing.assert_array_equal(
        out["image"], augment.normalize(augment.resize_bilinear(stl, 32, 32), *RECIPES["stl10"].mean_std)
    )


def test_cub_eval_is_box_crop_resize_center_crop():
    recipe = RECIPES["cub"]
    image = photo(375, 500)
    box = np.array([60 / 375, 27 / 500, 325 / 375, 304 / 500], np.float32)
    out = transforms.preprocess({"image": image, "label": 199, "bbox": box}, recipe)
    expected = augment.resize_bilinear(image[60:325, 27:304], 256, 256)[16:240, 16:240]
    np.testing.assert_array_equal(out["image"], augment.normalize(expected, *recipe.mean_std))
    np.testing.assert_allclose(out["box"], [0, 0, 224, 224])  # the crop is the bird's box


def test_cub_train_is_box_crop_resize_random_crop_flip():
    recipe = RECIPES["cub"]
    image = photo(300, 420)
    box = np.array([0.1, 0.2, 0.9, 0.7], np.float32)
    resized = augment.resize_bilinear(augment.crop_to_box(image, box), 256, 256)
    for seed in range(10):
        out = transforms.preprocess(
            {"image": image, "label": 1, "bbox": box}, recipe, rng=np.random.default_rng(seed)
        )
        rng = np.random.default_rng(seed)
        top, left = augment.random_crop_offsets(rng, (256, 256), (224, 224))
        expected, _ = augment.random_flip(resized[top : top + 224, left : left + 224], rng)
        np.testing.assert_array_equal(out["image"], augment.normalize(expected, *recipe.mean_std))


def test_cub_without_box_crop_carries_the_box_through_resize_and_crop():
    recipe = dataclasses.replace(RECIPES["cub"], crop_to_box=False)
    image = np.zeros((200, 400, 3), np.uint8)
    image[50:150, 100:300] = 255
    box = np.array([0.25, 0.25, 0.75, 0.75], np.float32)
    out = transforms.preprocess({"image": image, "label": 0, "bbox": box}, recipe)
    np.testing.assert_allclose(out["box"], [64 - 16, 64 - 16, 192 - 16, 192 - 16])
    bright = out["image"][..., 0] > 0
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    assert abs(rows[0] - 48) <= 1 and abs(rows[-1] + 1 - 176) <= 1 and abs(cols[0] - 48) <= 1


def test_cluttered_digits_has_no_augmentation_and_pixel_boxes():
    recipe = RECIPES["cluttered_digits"]
    image = photo(32, 32)
    example = {"image": image, "label": np.int64(4), "box": np.array([3, 4, 17, 18], np.int32)}
    out = transforms.preprocess(example, recipe, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["image"], image / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(out["box"], [3, 4, 17, 18])
    assert out["box"].dtype == np.float32


def test_greyscale_and_rgba_become_rgb():
    grey = photo(10, 12)[..., :1]
    np.testing.assert_array_equal(transforms.ensure_rgb(grey), np.repeat(grey, 3, -1))
    np.testing.assert_array_equal(transforms.ensure_rgb(grey[..., 0]), np.repeat(grey, 3, -1))
    assert transforms.ensure_rgb(photo(4, 4).repeat(2, axis=-1)[..., :4]).shape == (4, 4, 3)


def test_padding_example_matches_preprocess_structure():
    for name in ("cifar10", "cub", "cluttered_digits"):
        recipe = RECIPES[name]
        pad = transforms.padding_example(recipe)
        size = recipe.image_size
        example = {
            "image": photo(size + 10, size + 20),
            "label": 1,
            "bbox": np.array([0.1, 0.1, 0.9, 0.9]),
            "box": np.array([1, 1, 9, 9]),
        }
        real = transforms.EvalTransform(recipe).map(example)
        assert real.keys() == pad.keys() and not pad["mask"] and real["mask"]
        for key in real:
            assert real[key].shape == pad[key].shape and real[key].dtype == pad[key].dtype, (name, key)
