"""Every experiment config builds its model and trains 2 steps on random data of its shapes."""

import importlib
import pathlib

import jax
import numpy as np
import pytest

from ib_attention_jax import data as data_lib
from ib_attention_jax.models.registry import get_spec
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.training.loop import _objective, _optimizer_config, build_model
from ib_attention_jax.training.optimizers import make_optimizer
from ib_attention_jax.training.state import TrainState
from ib_attention_jax.training.step import StepConfig, make_train_step

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "experiments" / "configs"
# XLA's convolution compiles several times faster on CPU than the slices form; the two forms are
# tested equal in test_conv.py, and this smoke test is about the configs.
CONV_IMPL = "xla"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


def test_every_config_is_listed():
    assert "quickstart" in CONFIGS and "wrn_aib_qt_cifar100" in CONFIGS and len(CONFIGS) >= 17


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_two_steps(name):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    config.model_kwargs.conv_impl = CONV_IMPL
    doc = importlib.import_module(f"experiments.configs.{name}").__doc__
    assert f"--config=experiments/configs/{name}.py" in doc and "reach" in doc  # command and expected figure
    recipe = data_lib.get_recipe(config.dataset)
    spec = get_spec(config.model)
    assert recipe.image_size == spec.image_size, "the config's model does not take the dataset's images"
    num_classes = config.num_classes or recipe.num_classes
    model = build_model(config, num_classes)
    tx, _ = make_optimizer(_optimizer_config(config), steps_per_epoch=100, total_steps=200)
    size, batch = spec.image_size, 2
    variables = jax.jit(lambda k: model.init(k, np.zeros((1, size, size, 3), np.float32), deterministic=True))(
        jax.random.key(0))
    state = TrainState.create(variables, tx, jax.random.PRNGKey(0), ema=config.ema_decay > 0)
    step_config = StepConfig(_objective(config), config.num_samples, config.beta_warmup_steps, config.ema_decay)
    runner = Runner("shard_map", jax.devices()[:1])
    step = runner.compile_train_step(make_train_step(model, tx, step_config))
    rng = np.random.default_rng(0)
    pstate = runner.replicate(state)
    for _ in range(2):
        feed = {"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
                "label": rng.integers(0, num_classes, batch).astype(np.int32),
                "index": np.arange(batch, dtype=np.int32)}
        pstate, metrics = step(pstate, runner.shard_batch(feed))
    assert np.isfinite(float(metrics["total"]))
    assert int(runner.unreplicate(pstate).step) == 2
    assert runner.trace_counts == {"train_step": 1}
    if spec.quantized:
        assert "anchor_perplexity" in metrics
