"""The default data folder follows tfds; uint8 images are refused by the models and converted by a helper."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax import create_model, data
from ib_attention_jax.data import augment, sources
from ib_attention_jax.data.recipes import NORMALIZATIONS


def test_the_default_data_dir_is_tfds_data_dir_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert sources.default_data_dir() == str(tmp_path / "tfds")
    assert sources.resolve_data_dir(None) == str(tmp_path / "tfds")
    assert sources.resolve_data_dir("elsewhere") == "elsewhere"
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.default_data_dir() == os.path.join(str(tmp_path), "tensorflow_datasets")


def test_an_unprepared_default_folder_says_where_it_looked_and_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    problem = sources.preparation_problem(data.get_recipe("cluttered_digits"), None)
    assert f"not prepared in {tmp_path} (the default" in problem
    assert f"prepare cluttered_digits --data_dir {tmp_path}" in problem


def test_normalize_images_scales_uint8_like_the_pipelines():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    for name in ("cifar10", "half", "imagenet"):
        mean, std = NORMALIZATIONS[name]
        expected = (images.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
        np.testing.assert_allclose(data.normalize_images(images, name), expected, atol=1e-5)
    np.testing.assert_array_equal(data.normalize_images(images, "cluttered_digits"),  # a dataset: its recipe's
                                  augment.normalize(images, *NORMALIZATIONS["half"]))
    with pytest.raises(TypeError, match="takes uint8 images"):
        data.normalize_images(images.astype(np.float32), "cifar10")
    with pytest.raises(ValueError, match="unknown normalization 'cifar'"):
        data.normalize_images(images, "cifar")


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_integer_images_are_refused_with_the_conversion(dtype):
    model = create_model("small_aib", conv_impl="xla")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), deterministic=True)
    with pytest.raises(ValueError, match=rf"expects float images .* got {np.dtype(dtype).name}.*normalize_images"):
        model.apply(variables, np.zeros((2, 32, 32, 3), dtype), deterministic=True)
    plain = create_model("small_plain", conv_impl="xla")
    plain_vars = plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="expects float images"):
        plain.apply(plain_vars, np.zeros((2, 32, 32, 3), dtype))
