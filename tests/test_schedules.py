"""The optax forms of the official schedules against the closed forms they replace, at every epoch boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ib_attention_jax import data as data_lib
from ib_attention_jax.configs import baselines, official
from ib_attention_jax.interop.train_parity import LR_TOL, OFFICIAL_TRAIN_EXAMPLES
from ib_attention_jax.training import schedules

MULTISTEP_RECIPES = {
    "wrn_cifar10": official.cifar_wrn("cifar10"),
    "wrn_qt_cifar100": official.cifar_wrn("cifar100", quantized=True),
    "ltpa_cifar100": baselines.ltpa_cifar("cifar100"),
    "abn_cifar100": baselines.abn_cifar("cifar100"),
}


def _steps_per_epoch(config) -> int:
    recipe = data_lib.get_recipe(config.dataset)
    return recipe.steps_per_epoch(OFFICIAL_TRAIN_EXAMPLES[recipe.name], config.batch_size)


def _boundaries(num_epochs: int, spe: int) -> jnp.ndarray:
    """The last step of every epoch and the first of the next."""
    return jnp.asarray(sorted({max(e * spe + d, 0) for e in range(num_epochs + 1) for d in (-1, 0)}))


def _rates(schedule, steps) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(schedule))(steps))


def _closed_form_multistep(base_lr, spe, milestones, gamma):
    """The formula the optax schedule replaced: ``base * gamma ** (milestones passed)``."""
    boundaries = jnp.asarray(sorted(milestones))
    return lambda step: base_lr * gamma ** jnp.sum(jnp.floor_divide(step, spe) >= boundaries)


@pytest.mark.parametrize("name", sorted(MULTISTEP_RECIPES))
def test_multistep_is_bitwise_the_closed_form_at_every_epoch_boundary(name):
    config = MULTISTEP_RECIPES[name]
    opt = config.optimizer
    assert opt.schedule == "multistep"
    spe = _steps_per_epoch(config)
    steps = _boundaries(round(config.num_epochs), spe)
    ours = _rates(schedules.multistep(opt.learning_rate, spe, opt.milestones, opt.gamma), steps)
    before = _rates(_closed_form_multistep(opt.learning_rate, spe, opt.milestones, opt.gamma), steps)
    np.testing.assert_array_equal(ours, before)
    assert len(np.unique(ours)) == len(opt.milestones) + 1  # every milestone takes effect


def test_multistep_counts_a_repeated_milestone_twice_as_multisteplr_does():
    rates = _rates(schedules.multistep(0.1, 10, (2, 2, 5), 0.5), jnp.asarray([19, 20, 49, 50]))
    np.testing.assert_allclose(rates, [0.1, 0.025, 0.025, 0.0125], rtol=1e-7)


def test_exponential_table_matches_float64_where_optax_float32_power_does_not():
    config = official.cub("vgg16")
    opt = config.optimizer
    spe = _steps_per_epoch(config)
    steps = _boundaries(round(config.num_epochs), spe)
    exact = opt.learning_rate * np.float64(opt.exp_gamma) ** (np.asarray(steps) // spe // opt.exp_every_epochs)
    ours = _rates(schedules.exponential(opt.learning_rate, spe, opt.exp_gamma, opt.exp_every_epochs), steps)
    by_optax = _rates(optax.exponential_decay(opt.learning_rate, opt.exp_every_epochs * spe, opt.exp_gamma,
                                              staircase=True), steps)
    assert np.max(np.abs(ours - exact) / exact) < LR_TOL
    assert np.max(np.abs(by_optax - exact) / exact) > 4 * LR_TOL  # why the float64 table stays
