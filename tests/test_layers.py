"""Pooling: the tiled max-pool against lax.reduce_window (PyTorch's MaxPool2d), values and gradients, ties included."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ib_attention_jax.models import backend, create_model
from ib_attention_jax.models.conv import resolve_conv_impl
from ib_attention_jax.models.layers import adaptive_avg_pool, max_pool, tiled_max_pool


def _reduce_window_max_pool(x, window, stride, padding):
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def _value_and_grad(pool, x, g):
    @jax.jit
    def run(x, g):
        y, vjp = jax.vjp(pool, x)
        return y, vjp(g)[0]

    return run(x, g)


@pytest.mark.parametrize("window,shape", [(2, (2, 8, 8, 3)), (2, (1, 2, 2, 5)), (3, (2, 9, 6, 4))])
def test_tiled_max_pool_equals_reduce_window_with_first_maximum_gradients_on_ties(window, shape):
    rng = np.random.default_rng(window)
    # Rounded values and a ReLU: most tiles hold ties (zeros, equal integers), where the routing rule matters.
    x = jnp.asarray(np.maximum(np.round(rng.standard_normal(shape) * 2), 0), jnp.float32)
    out_shape = (shape[0], shape[1] // window, shape[2] // window, shape[3])
    g = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    ref_y, ref_dx = _value_and_grad(lambda x: _reduce_window_max_pool(x, window, window, 0), x, g)
    y, dx = _value_and_grad(lambda x: tiled_max_pool(x, window), x, g)
    assert y.shape == out_shape
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref_y))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(ref_dx))
    # Each tile passes its gradient to exactly one position.
    assert int((np.asarray(dx) != 0).sum()) == int((np.asarray(g) != 0).sum())


def test_tiled_max_pool_gradient_goes_to_the_first_maximum_in_row_major_order():
    x = jnp.asarray([[1.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
    dx = jax.grad(lambda x: tiled_max_pool(x, 2).sum())(x)
    np.testing.assert_array_equal(np.asarray(dx).reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_routes_tiling_pools_to_the_tiled_form_and_others_to_reduce_window(monkeypatch):
    monkeypatch.setattr(backend, "platform", lambda: "cpu")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 7, 3)), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda x: max_pool(x[:, :6, :6], 2))(x))
    assert "reduce_window" not in jaxpr and "custom_vjp" in jaxpr
    for args in ((3, 2, 1), (2, 2, 0)):  # the ResNet stem's overlapping pool; a map 2 does not tile
        window, stride, pad = args
        y = jax.jit(lambda x, a=args: max_pool(x, *a))(x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(_reduce_window_max_pool(x, window, stride, pad)))
        assert "reduce_window" in str(jax.make_jaxpr(lambda x, a=args: max_pool(x, *a))(x))


def test_adaptive_avg_pool_bins_overlap_like_pytorch():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 5, 5, 1))
    y = adaptive_avg_pool(x, 2)  # rows [0, 3) and [2, 5)
    np.testing.assert_allclose(np.asarray(y[0, :, 0, 0]), [1.0, 3.0])


def test_tiled_max_pool_propagates_nan_and_routes_its_gradient_to_it_like_pytorch():
    x = jnp.asarray([[1.0, jnp.nan], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    y, vjp = jax.vjp(lambda x: tiled_max_pool(x, 2), x)
    assert np.isnan(float(y[0, 0, 0, 0]))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.ones_like(y))[0]).reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


def _primitives(jaxpr) -> set[str]:
    """Names of the primitives of a jaxpr and of the jaxprs inside it."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_on_gpu_and_tpu_every_pool_is_xlas_reduce_window(platform, monkeypatch):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
    monkeypatch.setattr(backend, "platform", lambda: platform)
    prims = _primitives(jax.make_jaxpr(lambda x: max_pool(x, 2))(x).jaxpr)
    assert "reduce_window_max" in prims and not any("custom_vjp" in p for p in prims)
    np.testing.assert_array_equal(np.asarray(max_pool(x, 2)), np.asarray(tiled_max_pool(x, 2)))
    assert resolve_conv_impl("auto", (3, 3, 64, 64), 1, jnp.float32, 32) == "xla"  # the same rule as the convolutions
    model = create_model("small_aib", 10)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), deterministic=True))
    prims = _primitives(jax.make_jaxpr(lambda v, x: model.apply(v, x, deterministic=True))(
        variables, jnp.zeros((2, 32, 32, 3))).jaxpr)
    assert "reduce_window_max" in prims and "conv_general_dilated" in prims
    assert not any("custom_vjp" in p for p in prims)
