"""Variational attention (mean/std maps, reparameterised samples), modulation and the Gaussian latent."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention, modulate, offset_softplus
from ib_attention_jax.models.bottleneck import GaussianLatent


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


B, H, W, C = 2, 5, 6, 4


def _features(seed=0, shape=(B, H, W, C)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _softplus_np(x):
    x = np.asarray(x, np.float64)
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


@pytest.fixture(scope="module")
def att():
    """A VariationalAttention whose std bias puts the noise at a measurable ~0.3.

    conv_impl='xla' compiles faster on CPU; test_conv checks both forms agree.
    """
    mod = VariationalAttention(ConvMeanHead(conv_impl="xla"), std_bias_init=jax.nn.initializers.constant(4.0),
                               conv_impl="xla")
    f = _features()
    variables = jax.jit(lambda key, f: mod.init({"params": key}, f, deterministic=True))(_key(0), f)
    apply = jax.jit(lambda v, f, key, n: mod.apply(v, f, num_samples=n, rngs={"attention": key}),
                    static_argnums=3)
    return mod, variables, f, apply


def test_parameters_are_the_mean_head_and_the_std_conv(att):
    _, variables, _, _ = att
    shapes = jax.tree_util.tree_map(lambda a: a.shape, variables["params"])
    assert shapes == {"mean_head": {"conv": {"kernel": (3, 3, C, 1), "bias": (1,)}},
                      "std_conv": {"kernel": (3, 3, 1, 1), "bias": (1,)}}
    assert set(variables) == {"params"}


def test_mean_and_std_maps(att):
    mod, variables, f, apply = att
    out = apply(variables, f, _key(1), 3)
    for field in ("logit", "mean", "std_pre", "std"):
        assert getattr(out, field).shape == (B, H, W, 1), field
    assert out.samples.shape == (3, B, H, W, 1)
    mean, std = np.asarray(out.mean), np.asarray(out.std)
    assert np.all((mean > 0) & (mean < 1))
    np.testing.assert_allclose(mean, 1 / (1 + np.exp(-np.asarray(out.logit, np.float64))), rtol=1e-6)
    np.testing.assert_allclose(std, _softplus_np(np.asarray(out.std_pre) - 5.0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(offset_softplus(jnp.asarray(0.0))), np.log1p(np.exp(-5.0)), rtol=1e-6)
    assert np.all(std > 0)
    # the std map is the 3x3 std conv of the mean map only (not of the features)
    p = variables["params"]["std_conv"]
    padded = np.pad(mean[..., 0], ((0, 0), (1, 1), (1, 1)))
    k = np.asarray(p["kernel"])[:, :, 0, 0]
    std_pre = sum(k[i, j] * padded[:, i:i + H, j:j + W] for i in range(3) for j in range(3)) + float(p["bias"][0])
    np.testing.assert_allclose(np.asarray(out.std_pre)[..., 0], std_pre, rtol=1e-5, atol=1e-6)


def test_samples_depend_on_the_attention_key(att):
    _, variables, f, apply = att
    a = apply(variables, f, _key(1), 3).samples
    b = apply(variables, f, _key(2), 3).samples
    a2 = apply(variables, f, _key(1), 3).samples
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # the n samples of one call differ from each other
    assert not np.allclose(np.asarray(a[0]), np.asarray(a[1]))


def test_noise_needs_the_attention_stream(att):
    mod, variables, f, _ = att
    with pytest.raises(flax.errors.InvalidRngError, match="attention"):
        mod.apply(variables, f, rngs={"latent": _key(0)})


def test_deterministic_samples_equal_the_mean_without_rng(att):
    mod, variables, f, _ = att
    out = mod.apply(variables, f, num_samples=3, deterministic=True)
    again = mod.apply(variables, f, num_samples=3, deterministic=True)
    assert out.samples.shape == (3, B, H, W, 1)
    for s in range(3):
        np.testing.assert_array_equal(np.asarray(out.samples[s]), np.asarray(out.mean))
    np.testing.assert_array_equal(np.asarray(out.samples), np.asarray(again.samples))
    assert float(jnp.min(out.std)) > 0.1  # the zero-noise path is not a zero-std map


def test_empirical_moments_of_many_samples(att):
    _, variables, f, apply = att
    n = 2000
    out = apply(variables, f, _key(7), n)
    samples = np.asarray(out.samples, np.float64)
    mean, std = np.asarray(out.mean, np.float64), np.asarray(out.std, np.float64)
    assert std.min() > 0.1
    se = std / np.sqrt(n)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.12)
    z = (samples - mean) / std  # pooled over pixels: standard normal
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.01


def test_modulate_matches_a_sample_major_numpy_loop():
    n = 3
    f = np.asarray(_features(1), np.float32)
    a = np.random.default_rng(2).uniform(0, 1, (n, B, H, W, 1)).astype(np.float32)
    out = np.asarray(modulate(jnp.asarray(f), jnp.asarray(a)))
    assert out.shape == (n * B, H, W, C)
    expected = np.empty_like(out)
    for s in range(n):
        for i in range(B):
            expected[s * B + i] = f[i] + f[i] * a[s, i]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    # zero attention leaves the features unchanged; one doubles them
    np.testing.assert_array_equal(np.asarray(modulate(jnp.asarray(f), jnp.zeros((1, B, H, W, 1)))), f)
    np.testing.assert_allclose(np.asarray(modulate(jnp.asarray(f), jnp.ones((1, B, H, W, 1)))), 2 * f, rtol=1e-7)


def test_modulate_rejects_a_mismatched_map():
    with pytest.raises(AssertionError):
        modulate(_features(), jnp.zeros((2, B, H + 1, W, 1)))


K, ROWS = 4, 6


def _stats(seed=3):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((ROWS, 2 * K)) * 3.0, jnp.float32)


def test_gaussian_latent_shapes_and_std():
    stats = _stats()
    mod = GaussianLatent(K)
    assert mod.init({"params": _key(0)}, stats, deterministic=True) == {}
    out = mod.apply({}, stats, num_samples=3, rngs={"latent": _key(0)})
    assert out.mean.shape == out.std.shape == (ROWS, K)
    assert out.samples.shape == (3, ROWS, K)
    np.testing.assert_array_equal(np.asarray(out.mean), np.asarray(stats[:, :K]))
    np.testing.assert_allclose(np.asarray(out.std), _softplus_np(np.asarray(stats[:, K:]) - 5.0), rtol=1e-5)
    # samples are mean + std * eps with eps ~ N(0, 1)
    eps = (np.asarray(out.samples) - np.asarray(out.mean)) / np.asarray(out.std)
    assert np.all(np.isfinite(eps)) and np.abs(eps).max() < 6 and eps.std() > 0.3


def test_gaussian_latent_zero_noise_path():
    stats = _stats()
    out = GaussianLatent(K).apply({}, stats, num_samples=2, deterministic=True)
    for s in range(2):
        np.testing.assert_array_equal(np.asarray(out.samples[s]), np.asarray(out.mean))


def test_gaussian_latent_uses_the_latent_stream():
    stats, mod = _stats(), GaussianLatent(K)
    a = mod.apply({}, stats, num_samples=2, rngs={"latent": _key(1)}).samples
    a2 = mod.apply({}, stats, num_samples=2, rngs={"latent": _key(1)}).samples
    b = mod.apply({}, stats, num_samples=2, rngs={"latent": _key(2)}).samples
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(flax.errors.InvalidRngError, match="latent"):
        mod.apply({}, stats, rngs={"attention": _key(1)})


def test_gaussian_latent_rejects_wrong_stats_width():
    with pytest.raises(AssertionError):
        GaussianLatent(K).apply({}, jnp.zeros((ROWS, 2 * K + 1)), deterministic=True)
