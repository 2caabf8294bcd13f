"""The AIB objective: analytic KLs against Monte-Carlo, loss parts, units, factors and configs."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.aib import ModelOutput
from ib_attention_jax.models.bottleneck import LatentOutput
from ib_attention_jax.models.quantization import QuantizerOutput
from ib_attention_jax.objectives import (
    LN2,
    ObjectiveConfig,
    aib_loss,
    cross_entropy,
    kl_consistent_rows,
    kl_official_rows,
    kl_rows,
    official_objective,
)

MU = np.array([[0.3, -1.2, 0.8], [0.0, 0.5, -0.4]], np.float32)
STD = np.array([[0.4, 1.3, 0.05], [0.9, 0.2, 0.6]], np.float32)  # >= 0, like softplus outputs


def _log_normal(z, mean, scale):
    return -0.5 * ((z - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _mc_kl(mean, scale, n=200_000, seed=0):
    """Monte-Carlo KL(N(mean, scale^2) || N(0, 1)) summed over the last axis; per row (estimate, std error)."""
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    z = mean + scale * np.random.default_rng(seed).standard_normal((n,) + mean.shape)
    per_sample = np.sum(_log_normal(z, mean, scale) - _log_normal(z, 0.0, 1.0), axis=-1)  # (n, rows)
    return per_sample.mean(0), per_sample.std(0) / np.sqrt(n)


def _assert_mc_agrees(analytic, mc, se):
    analytic = np.asarray(analytic, np.float64)
    assert analytic.shape == mc.shape
    ok = (np.abs(analytic - mc) <= 3 * se) | (np.abs(analytic - mc) <= 0.02 * np.abs(analytic))
    assert ok.all(), (analytic, mc, se)


def test_consistent_kl_matches_monte_carlo():
    mc, se = _mc_kl(MU, STD)
    _assert_mc_agrees(kl_consistent_rows(jnp.asarray(MU), jnp.asarray(STD)), mc, se)


def test_official_kl_matches_monte_carlo_with_exp_std_scale():
    mc, se = _mc_kl(MU, np.exp(STD.astype(np.float64)), seed=1)
    _assert_mc_agrees(kl_official_rows(jnp.asarray(MU), jnp.asarray(STD)), mc, se)


def test_official_kl_is_the_exp_scale_closed_form():
    s, m = STD.astype(np.float64), MU.astype(np.float64)
    expected = np.sum(-s + 0.5 * (np.exp(2 * s) + m ** 2) - 0.5, axis=-1)  # METHOD.md section 2
    np.testing.assert_allclose(np.asarray(kl_official_rows(jnp.asarray(MU), jnp.asarray(STD))), expected, rtol=1e-5)
    expected = np.sum(0.5 * (s ** 2 + m ** 2 - 1) - np.log(s), axis=-1)
    np.testing.assert_allclose(np.asarray(kl_consistent_rows(jnp.asarray(MU), jnp.asarray(STD))), expected, rtol=1e-5)


def test_kl_known_values():
    zeros = jnp.zeros((2, 5))
    np.testing.assert_array_equal(np.asarray(kl_official_rows(zeros, zeros)), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(kl_consistent_rows(zeros, jnp.ones((2, 5)))), [0.0, 0.0])
    one = jnp.ones((1, 1))
    np.testing.assert_allclose(np.asarray(kl_consistent_rows(one, one)), [0.5], rtol=1e-6)  # mu=1, std=1
    np.testing.assert_allclose(np.asarray(kl_official_rows(jnp.zeros((1, 1)), one)),
                               [0.5 * (math.exp(2) - 1) - 1], rtol=1e-6)  # mu=0, std=1 -> scale e
    # summed over K: K identical dims give K times one dim's KL
    mu, std = jnp.full((1, 4), 0.7), jnp.full((1, 4), 0.3)
    np.testing.assert_allclose(np.asarray(kl_official_rows(mu, std)), 4 * np.asarray(kl_official_rows(mu[:, :1],
                               std[:, :1])), rtol=1e-6)
    with pytest.raises(ValueError, match="kl_form"):
        kl_rows(mu, std, "reverse")


def _output(rows=6, b=3, k=4, classes=5, quantizer=True, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((b, classes)), jnp.float32)
    mean = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
    std = jnp.asarray(rng.uniform(0.01, 1.0, (rows, k)), jnp.float32)
    latent = LatentOutput(mean=mean, std=std, samples=mean[None])
    quant = None
    if quantizer:
        quant = QuantizerOutput(quantized=jnp.zeros((1, b, 2, 2, 1)), index=jnp.zeros((1, b, 2, 2, 1), jnp.int32),
                                vq_loss=jnp.asarray(0.37), commit_loss=jnp.asarray(0.21),
                                usage=jnp.ones(4), perplexity=jnp.asarray(4.0))
    out = ModelOutput(logits=logits, features=jnp.zeros((b, 2, 2, 1)), latent=latent, quantizer=quant)
    labels = jnp.asarray(np.arange(b) % classes, jnp.int32)
    return out, labels


def _np_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    return np.mean(lse - logits[np.arange(len(labels)), np.asarray(labels)])


def test_cross_entropy_matches_numpy_and_masks():
    out, labels = _output()
    np.testing.assert_allclose(float(cross_entropy(out.logits, labels)), _np_ce(out.logits, labels), rtol=1e-6)
    mask = jnp.asarray([1.0, 0.0, 1.0])
    np.testing.assert_allclose(float(cross_entropy(out.logits, labels, mask)),
                               _np_ce(out.logits[jnp.asarray([0, 2])], labels[jnp.asarray([0, 2])]), rtol=1e-6)


@pytest.mark.parametrize("kl_form", ["official", "consistent"])
def test_aib_loss_parts_in_bits(kl_form):
    out, labels = _output()
    cfg = ObjectiveConfig(beta=0.3, info_factor=0.5, kl_form=kl_form, units="bits", vq_coef=0.4, commit_coef=0.1)
    total, parts = aib_loss(out, labels, cfg)
    assert set(parts) == {"ce", "class_loss", "kl", "info_loss", "vq_loss", "commit_loss", "qt_loss", "total"}
    ce = _np_ce(out.logits, labels)
    kl = np.mean(np.asarray(kl_rows(out.latent.mean, out.latent.std, kl_form)))
    np.testing.assert_allclose(float(parts["ce"]), ce, rtol=1e-6)
    np.testing.assert_allclose(float(parts["kl"]), kl, rtol=1e-6)
    np.testing.assert_allclose(float(parts["class_loss"]), ce / math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(parts["info_loss"]), 0.5 * kl / math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(parts["qt_loss"]), 0.4 * 0.37 + 0.1 * 0.21, rtol=1e-6)
    np.testing.assert_allclose(float(parts["total"]),
                               float(parts["class_loss"] + 0.3 * parts["info_loss"] + parts["qt_loss"]), rtol=1e-6)
    assert float(total) == float(parts["total"])
    for v in parts.values():
        assert v.shape == () and v.dtype == jnp.float32


def test_units_scale_by_ln2_and_info_factor_is_linear():
    out, labels = _output(quantizer=False)
    _, bits = aib_loss(out, labels, ObjectiveConfig(units="bits", info_factor=1.0))
    _, nats = aib_loss(out, labels, ObjectiveConfig(units="nats", info_factor=1.0))
    _, half = aib_loss(out, labels, ObjectiveConfig(units="nats", info_factor=0.5))
    np.testing.assert_allclose(float(bits["class_loss"]) * LN2, float(nats["class_loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(bits["info_loss"]) * LN2, float(nats["info_loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(bits["total"]) * LN2, float(nats["total"]), rtol=1e-6)
    np.testing.assert_allclose(float(nats["class_loss"]), float(nats["ce"]), rtol=1e-7)
    np.testing.assert_allclose(float(nats["info_loss"]), float(nats["kl"]), rtol=1e-7)
    np.testing.assert_allclose(float(half["info_loss"]), 0.5 * float(nats["info_loss"]), rtol=1e-6)
    assert set(bits) == {"ce", "class_loss", "kl", "info_loss", "total"}  # no quantiser: no qt parts
    assert ObjectiveConfig(units="bits").unit_scale == pytest.approx(1 / math.log(2))
    assert ObjectiveConfig(units="nats").unit_scale == 1.0


def test_beta_zero_leaves_only_the_class_loss():
    out, labels = _output(quantizer=False)
    _, parts = aib_loss(out, labels, ObjectiveConfig(beta=0.0))
    assert float(parts["info_loss"]) > 0
    assert float(parts["total"]) == float(parts["class_loss"])


def test_plain_output_gives_only_the_cross_entropy():
    out, labels = _output(quantizer=False)
    plain = ModelOutput(logits=out.logits, features=out.features)
    total, parts = aib_loss(plain, labels, ObjectiveConfig(units="bits"))
    assert set(parts) == {"ce", "class_loss", "total"}
    np.testing.assert_allclose(float(total), _np_ce(out.logits, labels) / math.log(2), rtol=1e-6)


def test_default_config_is_neutral_not_a_backbones_official_one():
    # A new backbone inherits no CIFAR-VGG constant: c = 1, the KL of what is sampled, nats.
    cfg = ObjectiveConfig()
    assert (cfg.beta, cfg.info_factor, cfg.kl_form, cfg.units, cfg.vq_coef, cfg.commit_coef, cfg.aux_coef) == \
        (1e-2, 1.0, "consistent", "nats", 0.4, 0.1, 1.0)
    out, labels = _output(quantizer=False)
    total, parts = aib_loss(out, labels)
    kl = np.mean(np.asarray(kl_consistent_rows(out.latent.mean, out.latent.std)))
    np.testing.assert_allclose(float(total), _np_ce(out.logits, labels) + 1e-2 * kl, rtol=1e-6)


def test_mask_excludes_padding_rows_from_ce_and_kl():
    # b = 3 examples, n = 2 samples: latent rows s*b + i; example 1 is padding.
    out, labels = _output(rows=6, b=3)
    mask = jnp.asarray([True, False, True])
    cfg = ObjectiveConfig(units="nats", info_factor=1.0)
    _, parts = aib_loss(out, labels, cfg, mask=mask)
    keep_rows = np.asarray([0, 2, 3, 5])
    kl = np.asarray(kl_consistent_rows(out.latent.mean, out.latent.std))[keep_rows].mean()
    np.testing.assert_allclose(float(parts["kl"]), kl, rtol=1e-6)
    np.testing.assert_allclose(float(parts["ce"]), _np_ce(out.logits[np.asarray([0, 2])], labels[np.asarray([0, 2])]),
                               rtol=1e-6)
    # whatever the padding row holds, the masked loss is the loss of the real examples alone
    garbage = out.replace(logits=out.logits.at[1].set(1e4),
                          latent=out.latent.replace(mean=out.latent.mean.at[jnp.asarray([1, 4])].set(50.0)))
    total_garbage, _ = aib_loss(garbage, labels, cfg, mask=mask)
    total, _ = aib_loss(out, labels, cfg, mask=mask)
    assert float(total_garbage) == pytest.approx(float(total), rel=1e-6)
    all_true, _ = aib_loss(out, labels, cfg, mask=jnp.ones(3, bool))
    assert float(all_true) == pytest.approx(float(aib_loss(out, labels, cfg)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="mask must have the labels' shape"):
        aib_loss(out, labels, cfg, mask=jnp.ones(6, bool))


def test_loss_of_an_output_without_logits_is_a_clear_error():
    out, labels = _output(quantizer=False)
    with pytest.raises(ValueError, match="needs logits.*AIBHead without a decoder"):
        aib_loss(out.replace(logits=None), labels)


@pytest.mark.parametrize("kwargs,match", [
    ({"kl_form": "forward"}, "kl_form"), ({"units": "nat"}, "units"), ({"beta": -1e-3}, "beta"),
    ({"info_factor": -0.5}, "info_factor"), ({"vq_coef": -0.4}, "vq_coef"), ({"commit_coef": -0.1}, "commit_coef"),
])
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)


@pytest.mark.parametrize("name,factor", [
    ("vgg_aib", 0.5), ("vgg_aib_qt", 0.5), ("wrn_aib", 1.0), ("wrn_aib_qt", 1.0), ("cub_vgg16_aib", 1.0),
    ("cub_vgg16_aib_qt", 1.0), ("cub_wrn50_2_aib", 1.0), ("cub_wrn50_2_aib_qt", 1.0),
])
def test_official_objective_per_model(name, factor):
    cfg = official_objective(name)
    assert cfg.info_factor == factor
    assert (cfg.beta, cfg.kl_form, cfg.units, cfg.vq_coef, cfg.commit_coef) == (1e-2, "official", "bits", 0.4, 0.1)


def test_official_objective_overrides_and_unknown_model():
    cfg = official_objective("wrn_aib", beta=0.1, kl_form="consistent")
    assert (cfg.info_factor, cfg.beta, cfg.kl_form) == (1.0, 0.1, "consistent")
    assert official_objective("vgg_aib", info_factor=2.0).info_factor == 2.0
    with pytest.raises(ValueError, match="unknown model"):
        official_objective("resnet_aib")
    with pytest.raises(ValueError, match="beta"):
        official_objective("vgg_aib", beta=-1.0)
