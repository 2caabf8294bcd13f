"""The packed-mask dropout (``models/dropout.py``): Flax's masks and numbers, 1 bit per element kept."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.dropout import Dropout, _pack, _unpack, dropout


@pytest.mark.parametrize("channels", [1, 7, 8, 13, 160])
def test_pack_then_unpack_is_the_identity(channels):
    keep = np.random.default_rng(channels).random((3, 5, channels)) < 0.6
    packed = _pack(jnp.asarray(keep))
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 5, -(-channels // 8))
    np.testing.assert_array_equal(np.asarray(_unpack(packed, channels)), keep)


@pytest.mark.parametrize("rate,dtype,channels", [(0.3, jnp.float32, 13), (0.5, jnp.float32, 16),
                                                 (0.3, jnp.bfloat16, 24)])
def test_outputs_and_gradients_are_bitwise_flax_dropout(rate, dtype, channels):
    """Same module name, same key: the same mask as flax.linen.Dropout, and the same numbers both ways."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 6, 6, channels)), dtype)
    g = jnp.asarray(rng.standard_normal(x.shape), dtype)
    rngs = {"dropout": jax.random.PRNGKey(7)}

    def run(layer):
        def loss(x):
            return jnp.sum(layer.apply({}, x, deterministic=False, rngs=rngs) * g)
        return jax.jit(lambda x: (layer.apply({}, x, deterministic=False, rngs=rngs), jax.grad(loss)(x)))(x)

    (ours, dours), (theirs, dtheirs) = run(Dropout(rate)), run(nn.Dropout(rate))
    assert ours.dtype == theirs.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    np.testing.assert_array_equal(np.asarray(dours, np.float32), np.asarray(dtheirs, np.float32))
    dropped = float(jnp.mean(ours == 0))
    assert abs(dropped - rate) < 0.1  # the mask drops about `rate` of the elements


def test_deterministic_rate_zero_and_rate_one():
    x = jnp.ones((2, 3, 4))
    rngs = {"dropout": jax.random.PRNGKey(0)}
    assert jnp.array_equal(Dropout(0.3).apply({}, x, deterministic=True), x)
    assert jnp.array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
    assert not jnp.any(Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs))


def test_gradient_keeps_less_memory_than_flax_dropout():
    """Four dropout layers in a chain: XLA's temporaries of the gradient, packed mask against Flax's layer.

    With Flax's layer XLA keeps each layer's raw random bits (two 32-bit words per element)
    for the backward pass; the packed mask is 1 bit per element.
    """
    x = jnp.zeros((8, 16, 16, 64), jnp.float32)
    w = jnp.full((64, 64), 1 / 64, jnp.float32)

    def grad_fn(drop):
        def loss(x, w):
            for i in range(4):
                x = drop(jnp.tanh(x @ w), jax.random.fold_in(jax.random.PRNGKey(0), i))
            return jnp.sum(x * x)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    ours = grad_fn(lambda x, key: dropout(x, key, 0.3))
    flax_layer = grad_fn(lambda x, key: nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key}))

    def temp_bytes(fn):
        return fn.lower(x, w).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(ours) < 0.75 * temp_bytes(flax_layer)
