"""The CPU convolution forms (slices, Winograd) against XLA's, forward and backward, for every conv the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.conv import (
    WINOGRAD_MIN_CHANNELS,
    WINOGRAD_MIN_MAP,
    WINOGRAD_MIN_OUT_CHANNELS,
    Conv,
    conv2d,
    conv2d_slices,
    conv2d_xla,
    resolve_conv_impl,
)
from ib_attention_jax.models.winograd import conv2d_winograd


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


TOL = 1e-5  # relative to max |reference|

# (name, map size, kernel, stride, padding, cin, cout); every combination the registered models use.
CASES = [
    *[(f"3x3_s1_p1_{s}x{s}", s, 3, 1, 1, 8, 12) for s in (32, 16, 8, 4, 2, 1)],
    *[(f"3x3_s1_p1_{s}x{s}_resnet", s, 3, 1, 1, 8, 12) for s in (56, 28, 14, 7)],  # CUB WRN-50-2, odd 7x7
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


@pytest.mark.parametrize("impl", ["slices", "winograd"])
@pytest.mark.parametrize("name,size,k,stride,pad,cin,cout", CASES, ids=[c[0] for c in CASES])
def test_cpu_forms_match_xla_forward_and_gradients(name, size, k, stride, pad, cin, cout, impl):
    """``impl="winograd"`` computes the 3x3 stride-1 cases by F(2x2, 3x3) and falls back to slices for the rest."""
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
    out, dx, dk = run(lambda x, w, s, p: conv2d(x, w, s, p, impl=impl))
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


@pytest.mark.parametrize("size,pads", [(9, ((0, 1), (1, 0))), (6, ((2, 0), (0, 2))), (5, ((0, 0), (0, 0)))])
def test_winograd_matches_xla_with_padding_pairs(size, pads):
    x, kernel = _normal(0, (2, size, size + 1, 4)), _normal(1, (3, 3, 4, 5))
    ref = jax.jit(lambda x, w: conv2d_xla(x, w, 1, pads))(x, kernel)
    out = jax.jit(lambda x, w: conv2d_winograd(x, w, pads))(x, kernel)
    assert out.shape == ref.shape
    assert _rel_err(out, ref) <= TOL


def test_winograd_at_model_width_stays_within_tolerance():
    """The F(2x2, 3x3) rounding grows with the channel count: check it at WRN's 640 channels."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 640)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 640, 64)) / np.sqrt(9 * 640), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((2, 8, 8, 64)), jnp.float32)

    @jax.jit
    def both(x, w, cot):
        outs = []
        for fn in (lambda x, w: conv2d_xla(x, w, 1, 1), lambda x, w: conv2d_winograd(x, w)):
            out, vjp = jax.vjp(fn, x, w)
            outs.append((out, *vjp(cot)))
        return outs

    ref, ours = both(x, kernel, cot)
    for a, b in zip(ours, ref, strict=True):
        assert _rel_err(a, b) <= TOL


def test_winograd_rejects_other_kernels_channel_mismatch_and_oversized_maps():
    with pytest.raises(ValueError, match="3x3 kernels only"):
        conv2d_winograd(jnp.zeros((1, 4, 4, 3)), jnp.zeros((5, 5, 3, 2)))
    with pytest.raises(ValueError, match="channels"):
        conv2d_winograd(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_winograd(jnp.zeros((1, 1, 1, 3)), jnp.zeros((3, 3, 3, 2)), ((0, 0), (0, 0)))


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
    cout = WINOGRAD_MIN_OUT_CHANNELS
    wide, narrow = (3, 3, WINOGRAD_MIN_CHANNELS, cout), (3, 3, WINOGRAD_MIN_CHANNELS - 1, cout)
    assert resolve_conv_impl("auto", wide, 1, jnp.float32, WINOGRAD_MIN_MAP) == "winograd"
    assert resolve_conv_impl("auto", wide, 1, jnp.float32, WINOGRAD_MIN_MAP - 1) == "slices"  # 4x4, 2x2 maps
    assert resolve_conv_impl("auto", narrow, 1, jnp.float32, 32) == "slices"
    assert resolve_conv_impl("auto", wide, 2, jnp.float32, 32) == "slices"  # strided
    assert resolve_conv_impl("auto", (1, 1, 64, 8), 1, jnp.float32, 32) == "slices"
    assert resolve_conv_impl("auto", wide, 1, jnp.bfloat16, 32) == "slices"
    # a one-channel map head on a wide input: XLA's convolution; on a narrow input: slices
    assert resolve_conv_impl("auto", (3, 3, WINOGRAD_MIN_CHANNELS, cout - 1), 1, jnp.float32, 16) == "xla"
    assert resolve_conv_impl("auto", (3, 3, 256, 1), 1, jnp.float32, 16) == "xla"
    assert resolve_conv_impl("auto", (3, 3, 256, 1), 2, jnp.float32, 16) == "slices"
    assert resolve_conv_impl("auto", (3, 3, 10, 1), 1, jnp.float32, 16) == "slices"
    assert resolve_conv_impl("winograd", (3, 3, 256, 1), 1, jnp.float32, 16) == "winograd"
    assert resolve_conv_impl("winograd", (3, 3, 1, 1), 1, jnp.float32, 2) == "winograd"  # explicit: any 3x3 s1
    assert resolve_conv_impl("winograd", (1, 1, 64, 8), 1) == "slices"
    assert resolve_conv_impl("xla", wide, 1, jnp.float32, 32) == "xla"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="conv_impl"):
        conv2d(jnp.zeros((1, 3, 3, 1)), jnp.zeros((1, 1, 1, 1)), impl="fft")


@pytest.mark.parametrize("k,stride,pad,use_bias", [(3, 1, None, True), (3, 2, None, False), (1, 2, 0, False)])
def test_conv_module_same_params_and_outputs_under_every_impl(k, stride, pad, use_bias):
    x = _normal(0, (2, 16, 16, WINOGRAD_MIN_CHANNELS))  # wide enough that "auto" takes Winograd for 3x3 stride 1
    init = jax.nn.initializers.normal(1.0)
    cout = WINOGRAD_MIN_OUT_CHANNELS
    mods = {impl: Conv(cout, k, stride, pad, use_bias=use_bias, kernel_init=init, bias_init=init, impl=impl)
            for impl in ("xla", "slices", "winograd", "auto")}
    params = {impl: m.init(_key(42), x) for impl, m in mods.items()}
    ref = params["xla"]
    for impl in ("slices", "winograd", "auto"):
        assert jax.tree_util.tree_structure(params[impl]) == jax.tree_util.tree_structure(ref)
        for a, b in zip(jax.tree_util.tree_leaves(params[impl]), jax.tree_util.tree_leaves(ref), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ref["params"]["kernel"].shape == (k, k, WINOGRAD_MIN_CHANNELS, cout)
    assert ("bias" in ref["params"]) == use_bias
    out_ref = jax.jit(mods["xla"].apply)(ref, x)
    size = (16 + 2 * (k // 2 if pad is None else pad) - k) // stride + 1
    assert out_ref.shape == (2, size, size, cout)
    for impl in ("slices", "winograd", "auto"):
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
        Conv(4, impl="fft", kernel_init=jax.nn.initializers.zeros).init(_key(0), jnp.zeros((1, 4, 4, 2)))
