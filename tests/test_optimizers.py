"""The weight EMA as optax's Polyak average, against the formula it replaced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.training.optimizers import ema_update


def _formula(ema, new, decay):
    """The previous form: ``decay * ema + (1 - decay) * new``."""
    return jax.tree_util.tree_map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


@pytest.mark.parametrize("decay", [0.999, 0.99, 0.9, 0.5, 0.0])
def test_ema_update_is_bitwise_the_formula_under_jit(decay):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    ema = {"conv": {"kernel": jax.random.normal(keys[0], (3, 3, 4, 8))}, "bias": jax.random.normal(keys[1], (8,))}
    new = {"conv": {"kernel": jax.random.normal(keys[2], (3, 3, 4, 8))}, "bias": 1e3 * jax.random.normal(keys[3], (8,))}
    ours = jax.jit(ema_update, static_argnums=2)(ema, new, decay)
    before = jax.jit(_formula, static_argnums=2)(ema, new, decay)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(before), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a).view(np.int32), np.asarray(b).view(np.int32))


def test_ema_update_moves_toward_the_new_weights():
    out = ema_update({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, 0.75)
    np.testing.assert_allclose(np.asarray(out["w"]), 0.25)
