"""The CPU 'slices' convolution against XLA's, forward and backward, for every conv the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.conv import Conv, conv2d, conv2d_slices, conv2d_xla, resolve_conv_impl


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


TOL = 1e-5  # relative to max |reference|

# (name, map size, kernel, stride, padding, cin, cout); every combination the registered models use.
CASES = [
    *[(f"3x3_s1_p1_{s}x{s}", s, 3, 1, 1, 8, 12) for s in (32, 16, 8, 4, 2, 1)],
    ("3x3_s1_p1_to_one_channel", 16, 3, 1, 1, 16, 1),  # attention mean head
    ("3x3_s1_p1_one_to_one", 16, 3, 1, 1, 1, 1),  # attention std conv on the mean map
    ("3x3_s2_p1_wrn_32to16", 32, 3, 2, 1, 8, 12),
    ("3x3_s2_p1_wrn_16to8", 16, 3, 2, 1, 8, 12),
    ("3x3_s2_p1_resnet_56to28", 56, 3, 2, 1, 4, 8),
    ("3x3_s2_p1_resnet_28to14", 28, 3, 2, 1, 4, 8),
    ("3x3_s2_p1_resnet_14to7", 14, 3, 2, 1, 8, 12),
    ("1x1_s1_p0", 16, 1, 1, 0, 8, 12),
    ("1x1_s2_p0_32to16", 32, 1, 2, 0, 8, 12),
    ("1x1_s2_p0_14to7", 14, 1, 2, 0, 8, 12),
    ("7x7_s2_p3_stem", 32, 7, 2, 3, 3, 8),
    ("dense_1x1_on_1x1", 1, 1, 1, 0, 16, 12),
    ("dense_2x2_on_2x2", 2, 2, 1, 0, 16, 12),
    ("dense_3x3_on_3x3", 3, 3, 1, 0, 16, 12),
]


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("name,size,k,stride,pad,cin,cout", CASES, ids=[c[0] for c in CASES])
def test_slices_matches_xla_forward_and_gradients(name, size, k, stride, pad, cin, cout):
    rng = np.random.default_rng(size * 1000 + k * 100 + stride * 10 + cout)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    out_size = (size + 2 * pad - k) // stride + 1
    cot = jnp.asarray(rng.standard_normal((2, out_size, out_size, cout)), jnp.float32)

    def run(fn):
        # Arrays go in as arguments: closed-over constants would make XLA constant-fold the conv (slow).
        @jax.jit
        def f(x, w, cot):
            out, vjp = jax.vjp(lambda x, w: fn(x, w, stride, pad), x, w)
            return (out, *vjp(cot))

        return f(x, kernel, cot)

    ref_out, ref_dx, ref_dk = run(conv2d_xla)
    out, dx, dk = run(conv2d_slices)
    assert out.shape == ref_out.shape == (2, out_size, out_size, cout)
    assert dx.shape == x.shape and dk.shape == kernel.shape
    assert _rel_err(out, ref_out) <= TOL
    assert _rel_err(dx, ref_dx) <= TOL
    assert _rel_err(dk, ref_dk) <= TOL


def test_slices_accepts_asymmetric_padding_pairs():
    x, kernel = _normal(0, (2, 9, 9, 4)), _normal(1, (3, 3, 4, 5))
    pads = ((0, 1), (1, 0))
    ref = jax.jit(lambda x, w: conv2d_xla(x, w, 2, pads))(x, kernel)
    assert ref.shape == (2, 4, 4, 5)
    assert _rel_err(jax.jit(lambda x, w: conv2d_slices(x, w, 2, pads))(x, kernel), ref) <= TOL


def test_slices_rejects_channel_mismatch_and_oversized_kernel():
    with pytest.raises(ValueError, match="channels"):
        conv2d_slices(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_slices(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 2)), padding=0)


def test_resolve_conv_impl():
    assert jax.default_backend() == "cpu"
    assert resolve_conv_impl("auto") == "slices"
    assert resolve_conv_impl("xla") == "xla"
    assert resolve_conv_impl("slices") == "slices"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="conv_impl"):
        conv2d(jnp.zeros((1, 3, 3, 1)), jnp.zeros((1, 1, 1, 1)), impl="fft")


@pytest.mark.parametrize("k,stride,pad,use_bias", [(3, 1, None, True), (3, 2, None, False), (1, 2, 0, False)])
def test_conv_module_same_params_and_outputs_under_both_impls(k, stride, pad, use_bias):
    x = _normal(0, (2, 16, 16, 6))
    init = jax.nn.initializers.normal(1.0)
    mods = {impl: Conv(5, k, stride, pad, use_bias=use_bias, kernel_init=init, bias_init=init, impl=impl)
            for impl in ("xla", "slices", "auto")}
    params = {impl: m.init(_key(42), x) for impl, m in mods.items()}
    ref = params["xla"]
    for impl in ("slices", "auto"):
        assert jax.tree_util.tree_structure(params[impl]) == jax.tree_util.tree_structure(ref)
        for a, b in zip(jax.tree_util.tree_leaves(params[impl]), jax.tree_util.tree_leaves(ref), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ref["params"]["kernel"].shape == (k, k, 6, 5)
    assert ("bias" in ref["params"]) == use_bias
    out_ref = jax.jit(mods["xla"].apply)(ref, x)
    size = (16 + 2 * (k // 2 if pad is None else pad) - k) // stride + 1
    assert out_ref.shape == (2, size, size, 5)
    for impl in ("slices", "auto"):
        assert _rel_err(jax.jit(mods[impl].apply)(ref, x), out_ref) <= TOL


def test_conv_module_default_padding_is_symmetric_half_kernel():
    # stride-2 3x3 with padding 1 on both sides (PyTorch), not Flax 'SAME' (which pads 0 before, 1 after).
    x = _normal(3, (1, 8, 8, 2))
    m = Conv(3, 3, 2, impl="xla")
    v = m.init(_key(0), x)
    expected = jax.jit(lambda x, w, b: conv2d_xla(x, w, 2, ((1, 1), (1, 1))) + b)(
        x, v["params"]["kernel"], v["params"]["bias"])
    np.testing.assert_allclose(np.asarray(jax.jit(m.apply)(v, x)), np.asarray(expected), rtol=0, atol=1e-6)


def test_conv_module_invalid_impl_raises():
    with pytest.raises(ValueError, match="conv_impl"):
        Conv(4, impl="winograd", kernel_init=jax.nn.initializers.zeros).init(_key(0), jnp.zeros((1, 4, 4, 2)))
