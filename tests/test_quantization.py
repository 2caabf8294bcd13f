"""Anchor quantisation: assignment, straight-through gradients, the two losses, usage and perplexity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.quantization import AnchorQuantizer, nearest_anchor, quantize


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


Q = 6


def _data(seed=0, shape=(2, 3, 4, 4, 1)):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-0.1, 1.1, shape).astype(np.float32)
    anchors = np.sort(rng.uniform(0.0, 1.0, Q)).astype(np.float32)
    anchors[-1] = 2.0  # an anchor no value is near: it stays unused
    return values, anchors


class Holder(nn.Module):
    """Wraps the quantiser as a submodule, the way AIBClassifier uses it.

    (``AnchorQuantizer.init`` cannot be called directly: its ``init`` field shadows
    ``Module.init``; see test_anchor_quantizer_can_be_initialised_standalone.)
    """

    num_anchors: int
    anchor_init: str = "linspace"
    init_range: tuple[float, float] = (0.0, 1.0)

    @nn.compact
    def __call__(self, values):
        return AnchorQuantizer(self.num_anchors, self.anchor_init, self.init_range, name="quantizer")(values)


def _anchors(variables):
    assert set(variables) == {"params"} and set(variables["params"]["quantizer"]) == {"anchors"}
    return np.asarray(variables["params"]["quantizer"]["anchors"])


def _np_index(values, anchors):
    return np.argmin((values.astype(np.float64)[..., None] - anchors.astype(np.float64)) ** 2, axis=-1)


def test_nearest_anchor_matches_numpy_argmin():
    values, anchors = _data()
    expected = _np_index(values, anchors)
    np.testing.assert_array_equal(np.asarray(nearest_anchor(jnp.asarray(values), jnp.asarray(anchors))), expected)
    out = quantize(jnp.asarray(values), jnp.asarray(anchors))
    np.testing.assert_array_equal(np.asarray(out.index), expected)
    assert out.index.shape == values.shape
    assert jnp.issubdtype(out.index.dtype, jnp.integer)
    # the forward value is exactly the nearest anchor
    np.testing.assert_array_equal(np.asarray(out.quantized), anchors[expected])
    assert Q - 1 not in expected  # the far anchor is unused


def test_ties_take_the_first_anchor():
    anchors = jnp.asarray([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(np.asarray(nearest_anchor(jnp.asarray([0.25, 0.75]), anchors)), [0, 1])


def test_straight_through_gradient_is_identity_and_skips_anchors():
    values, anchors = _data(1)
    w = np.random.default_rng(2).standard_normal(values.shape).astype(np.float32)

    def task(v, a):
        return jnp.sum(w * quantize(v, a).quantized)

    dv, da = jax.grad(task, argnums=(0, 1))(jnp.asarray(values), jnp.asarray(anchors))
    np.testing.assert_array_equal(np.asarray(dv), w)
    np.testing.assert_array_equal(np.asarray(da), np.zeros(Q, np.float32))


def test_losses_values_and_gradients():
    values, anchors = _data(3)
    v, a = jnp.asarray(values), jnp.asarray(anchors)
    idx = _np_index(values, anchors)
    q = anchors[idx].astype(np.float64)
    n = values.size
    out = quantize(v, a)
    expected_mse = np.mean((q - values) ** 2)
    np.testing.assert_allclose(float(out.vq_loss), expected_mse, rtol=1e-5)
    np.testing.assert_allclose(float(out.commit_loss), expected_mse, rtol=1e-5)

    vq_dv, vq_da = jax.grad(lambda v, a: quantize(v, a).vq_loss, argnums=(0, 1))(v, a)
    cm_dv, cm_da = jax.grad(lambda v, a: quantize(v, a).commit_loss, argnums=(0, 1))(v, a)

    # vq_loss reaches only the anchors: d/dv_k = 2/N * sum_{j assigned to k} (v_k - a_j)
    expected_da = np.array([2.0 / n * np.sum(anchors[k] - values[idx == k].astype(np.float64)) for k in range(Q)])
    np.testing.assert_allclose(np.asarray(vq_da), expected_da, rtol=1e-4, atol=1e-8)
    used = np.bincount(idx.reshape(-1), minlength=Q) > 0
    assert np.all(np.asarray(vq_da)[used] != 0)
    assert np.all(np.asarray(vq_da)[~used] == 0) and (~used).any()
    np.testing.assert_array_equal(np.asarray(vq_dv), np.zeros_like(values))

    # commit_loss reaches only the attention values: 2 (a - q) / N
    np.testing.assert_array_equal(np.asarray(cm_da), np.zeros(Q, np.float32))
    np.testing.assert_allclose(np.asarray(cm_dv), 2.0 * (values - q) / n, rtol=1e-5, atol=1e-9)


def test_usage_and_perplexity_match_numpy():
    values, anchors = _data(4)
    out = quantize(jnp.asarray(values), jnp.asarray(anchors))
    counts = np.bincount(_np_index(values, anchors).reshape(-1), minlength=Q)
    np.testing.assert_array_equal(np.asarray(out.usage), counts)
    assert out.usage.shape == (Q,)
    assert float(jnp.sum(out.usage)) == values.size
    p = counts / counts.sum()
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    np.testing.assert_allclose(float(out.perplexity), np.exp(entropy), rtol=1e-5)
    assert 1.0 <= float(out.perplexity) <= Q


def test_perplexity_extremes():
    anchors = jnp.linspace(0.0, 1.0, Q)
    one = quantize(jnp.full((2, 8), 0.01), anchors)
    np.testing.assert_allclose(float(one.perplexity), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(one.usage), [16] + [0] * (Q - 1))
    uniform = quantize(jnp.tile(anchors, 3).reshape(3, Q), anchors)
    np.testing.assert_allclose(float(uniform.perplexity), float(Q), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(uniform.usage), [3] * Q)
    assert float(uniform.vq_loss) == 0.0 and float(uniform.commit_loss) == 0.0


def test_anchor_quantizer_linspace_init():
    values = jnp.zeros((1, 2, 2, 1))
    a = _anchors(Holder(20).init(_key(0), values))
    np.testing.assert_allclose(a, np.linspace(0, 1, 20), rtol=0, atol=1e-7)
    assert a.dtype == np.float32 and a.shape == (20,)
    a = _anchors(Holder(5, init_range=(-1.0, 3.0)).init(_key(0), values))
    np.testing.assert_allclose(a, [-1, 0, 1, 2, 3], atol=1e-7)


def test_anchor_quantizer_uniform_init():
    values = jnp.zeros((1, 2, 2, 1))
    mod = Holder(50, "uniform", (0.2, 0.6))
    a = _anchors(mod.init(_key(0), values))
    b = _anchors(mod.init(_key(1), values))
    assert a.shape == (50,)
    assert np.all((a >= 0.2) & (a < 0.6))
    assert len(np.unique(a)) == 50
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, _anchors(mod.init(_key(0), values)))


def test_anchor_quantizer_forward_uses_its_anchors_and_casts_to_float32():
    values, _ = _data(5)
    mod = Holder(Q)
    v = mod.init(_key(0), jnp.asarray(values))
    out = mod.apply(v, jnp.asarray(values, jnp.bfloat16))
    assert out.quantized.dtype == jnp.float32
    ref = quantize(jnp.asarray(values, jnp.bfloat16).astype(jnp.float32), jnp.linspace(0.0, 1.0, Q))
    np.testing.assert_array_equal(np.asarray(out.index), np.asarray(ref.index))
    np.testing.assert_array_equal(np.asarray(out.quantized), np.asarray(ref.quantized))


@pytest.mark.parametrize("args,match", [((0,), "num_anchors"), ((-3,), "num_anchors"), ((4, "kmeans"), "init")])
def test_anchor_quantizer_rejects_invalid_settings(args, match):
    with pytest.raises(ValueError, match=match):
        Holder(*args).init(_key(0), jnp.zeros((1, 2, 2, 1)))


def test_anchor_quantizer_can_be_initialised_standalone():
    # BUG (library): the dataclass field ``init`` shadows flax's ``Module.init``, so
    # ``AnchorQuantizer(20).init(key, x)`` raises "TypeError: 'str' object is not callable".
    # Fix: rename the field (e.g. ``anchor_init``, as AIBClassifier already calls it).
    quantizer = AnchorQuantizer(20)
    assert callable(quantizer.init), "AnchorQuantizer.init is shadowed by the anchor-init field"
    v = quantizer.init(_key(0), jnp.zeros((1, 2, 2, 1)))
    np.testing.assert_allclose(np.asarray(v["params"]["anchors"]), np.linspace(0, 1, 20), atol=1e-7)
