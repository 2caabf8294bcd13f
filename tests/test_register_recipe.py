"""Your own data: register_recipe() makes a TFDS dataset a name configs use, checked and run through the CLI."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from ib_attention_jax import Recipe, register_recipe
from ib_attention_jax.data import build_cluttered_digits
from ib_attention_jax.data.recipes import NORMALIZATIONS, RECIPES, get_recipe

REPO = pathlib.Path(__file__).parent.parent
MY = Recipe(name="my_digits", tfds_name="cluttered_digits", num_classes=10, image_size=32,
            augmentation="pad_crop_flip", normalization="my_digits", flip=False, box_key="box", box_format="pixels")


@pytest.fixture
def clean():
    """Removes what a test registers."""
    recipes, norms = dict(RECIPES), dict(NORMALIZATIONS)
    yield
    for table, saved in ((RECIPES, recipes), (NORMALIZATIONS, norms)):
        table.clear()
        table.update(saved)


def test_a_registered_recipe_is_a_dataset_name_with_its_normalisation(clean):
    assert register_recipe(MY, mean_std=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))) is MY
    assert get_recipe("my_digits") is MY and MY.mean_std == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    register_recipe(MY)  # the same recipe again (a config file loaded twice) is fine
    with pytest.raises(ValueError, match="'my_digits' is already registered.*replace=True"):
        register_recipe(dataclasses.replace(MY, num_classes=5))
    assert register_recipe(dataclasses.replace(MY, num_classes=5), replace=True).num_classes == 5
    with pytest.raises(ValueError, match="'cifar10' is already registered"):
        register_recipe(dataclasses.replace(RECIPES["cifar10"], num_classes=11))


@pytest.mark.parametrize("kwargs,mean_std,match", [
    ({"normalization": "mine"}, None, r"normalization 'mine' is not one of .*pass mean_std="),
    ({"normalization": "cifar10"}, ((0.1, 0.1, 0.1), (1.0, 1.0, 1.0)), "'cifar10' is already registered as"),
    ({}, ((0.5, 0.5, 0.5), (0.0, 1.0, 1.0)), "std > 0"),
    ({"augmentation": "random_erase"}, None, "augmentation must be one of"),
])
def test_bad_recipes_are_refused_naming_the_fix(clean, kwargs, mean_std, match):
    with pytest.raises(ValueError, match=match):
        register_recipe(dataclasses.replace(MY, **kwargs), mean_std=mean_std)
    assert "my_digits" not in RECIPES


def test_a_config_file_that_registers_a_recipe_trains_through_the_cli(tmp_path):
    data_dir = tmp_path / "tfds"
    build_cluttered_digits(str(data_dir))
    config = tmp_path / "my_data.py"
    config.write_text(
        "from ib_attention_jax import Recipe, register_recipe\n"
        "from ib_attention_jax.configs.quickstart import quickstart\n\n"
        "register_recipe(Recipe(name='my_digits', tfds_name='cluttered_digits', num_classes=10, image_size=32,\n"
        "                       augmentation='pad_crop_flip', normalization='my_digits', flip=False),\n"
        "                mean_std=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))\n\n\n"
        "def get_config():\n"
        "    c = quickstart()\n"
        "    c.dataset = 'my_digits'\n"
        "    return c\n")
    args = [f"--config={config}", f"--config.data_dir={data_dir}", "--config.num_steps=2", "--config.batch_size=16",
            "--config.train_split=train[:256]", "--config.eval_split=test[:64]", "--config.eval_batch_size=32",
            "--config.eval_num_samples=2", "--config.progress=False", "--config.export_examples=4",
            "--config.attention_metrics_examples=0", "--config.model_kwargs.conv_impl=xla"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "experiments.main", f"--workdir={tmp_path / 'W'}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "W" / "summary.json").read_text())
    assert summary["dataset"] == "my_digits" and summary["steps"] == 2 and summary["num_eval_examples"] == 64
