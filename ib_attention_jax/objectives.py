"""The AIB training objective as pure functions: the total and every part.

Two KL forms:

* ``official``: what the official training step computes. The posterior in the KL is
  N(mu_z, exp(std_z)^2) although samples use std_z as the scale; per row
  ``sum_k [0.5 * (exp(2 std) + mu^2 - 1) - std]``, averaged over the n*b rows.
* ``consistent``: the KL of the distribution actually sampled, N(mu_z, std_z^2):
  ``sum_k [0.5 * (std^2 + mu^2 - 1) - log std]``.

The official runs measure CE and KL in bits (divided by ln 2) and scale the KL by a
per-backbone factor c (0.5 for the CIFAR VGG, 1 otherwise):
``total = CE/ln2 + beta * c * KL/ln2 (+ vq_coef * vq + commit_coef * commit)``.
``ObjectiveConfig()`` is not that: its defaults are neutral for a new backbone (the consistent KL,
nats, c = 1); :func:`official_objective` and the official configs set the official values
explicitly.

The attention baselines use the same function: LTPA's loss is its cross entropy, ABN's
adds the cross entropy of its attention-branch logits (``output.aux_logits``, weight
``aux_coef``, 1 in the public code); their configs measure in nats as the public code does.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from ib_attention_jax.models.aib import ModelOutput
from ib_attention_jax.models.layers import at_least_float32

Array = jax.Array
LN2 = math.log(2.0)
KL_FORMS = ("official", "consistent")
UNITS = ("bits", "nats")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Weights and forms of the loss terms.

    The defaults carry no backbone's constants: ``info_factor`` 1 (no extra scale on beta), the KL
    of the distribution that is sampled (``"consistent"``) and nats. ``beta`` 0.01 and the anchor
    weights 0.4 / 0.1 are the method's own values, used by every official recipe. A run that
    reproduces an official one takes :func:`official_objective` (``kl_form="official"``, bits and the
    backbone's c, 0.5 for the CIFAR VGG).
    """

    beta: float = 1e-2
    info_factor: float = 1.0  # c in beta * c * KL; the official runs: 0.5 for the CIFAR VGG, 1 for WRN and CUB
    kl_form: str = "consistent"  # "official": the KL form of the official code (module docstring)
    units: str = "nats"  # "bits": CE and KL divided by ln 2, as the official runs log and train them
    vq_coef: float = 0.4
    commit_coef: float = 0.1
    aux_coef: float = 1.0  # weight of an auxiliary classifier's cross entropy (ABN's attention branch: 1)

    def __post_init__(self) -> None:
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, got {self.kl_form!r}")
        if self.units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {self.units!r}")
        for name in ("beta", "info_factor", "vq_coef", "commit_coef", "aux_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def unit_scale(self) -> float:
        return 1.0 / LN2 if self.units == "bits" else 1.0


def kl_official_rows(mean: Array, std: Array) -> Array:
    """Per-row official KL (nats) of N(mean, exp(std)^2) from N(0, I); (rows, K) -> (rows,).

    Written as PyTorch's Normal-Normal KL with scale exp(std), to round like it.
    """
    scale = jnp.exp(std)
    var_ratio = jnp.square(scale)
    return jnp.sum(0.5 * (var_ratio + jnp.square(mean) - 1.0 - jnp.log(var_ratio)), axis=-1)


def kl_consistent_rows(mean: Array, std: Array) -> Array:
    """Per-row KL (nats) of N(mean, std^2) from N(0, I): the distribution that is sampled."""
    var = jnp.square(std)
    return jnp.sum(0.5 * (var + jnp.square(mean) - 1.0) - jnp.log(std), axis=-1)


def kl_rows(mean: Array, std: Array, form: str = "official") -> Array:
    if form == "official":
        return kl_official_rows(mean, std)
    if form == "consistent":
        return kl_consistent_rows(mean, std)
    raise ValueError(f"kl_form must be one of {KL_FORMS}, got {form!r}")


def masked_mean(values: Array, mask: Array | None = None) -> Array:
    """Mean of ``values`` (rows,), or over the rows where ``mask`` is true (0 when none is)."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Mean softmax cross-entropy (nats) over the batch, or over ``mask`` where given."""
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(at_least_float32(logits), labels), mask)


def aib_loss(output: ModelOutput, labels: Array, config: ObjectiveConfig = ObjectiveConfig(),
             beta: Array | float | None = None, mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Total loss and its parts for a model output and integer labels.

    Parts: ``ce`` and ``kl`` (nats, as computed), ``class_loss`` and ``info_loss`` (in
    the configured units, info_loss including the factor c), ``vq_loss``,
    ``commit_loss``, ``qt_loss`` (weighted quantiser terms), ``aux_ce`` and ``aux_loss``
    (an auxiliary classifier's cross entropy in nats, and weighted in the configured
    units, when ``output.aux_logits`` is set) and ``total``. The KL,
    quantiser losses and totals are at least float32 whatever the compute dtype.
    Plain classifiers (no latent) get only the cross-entropy. ``beta`` overrides
    ``config.beta`` (a traced value for a warm-up schedule).

    ``mask`` (b,) marks the real examples of a padded batch: the cross entropies are means over
    them and the KL a mean over their latent rows (row ``s*b + i`` belongs to example i), so
    padding changes nothing. The quantiser losses are the model's means over the whole map batch.
    """
    beta = config.beta if beta is None else beta
    scale = config.unit_scale
    if output.logits is None:
        raise ValueError("aib_loss needs logits: this output has none (an AIBHead without a decoder); "
                         "give the head num_classes or a decoder, or write the loss on output.latent")
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"mask must have the labels' shape {tuple(labels.shape)}, got {tuple(mask.shape)}")
    ce = cross_entropy(output.logits, labels, mask)
    parts: dict[str, Array] = {"ce": ce, "class_loss": ce * scale}
    total = parts["class_loss"]
    if output.latent is not None:
        mean = at_least_float32(output.latent.mean)
        std = at_least_float32(output.latent.std)
        rows = kl_rows(mean, std, config.kl_form)  # (n * b,), sample-major
        kl = masked_mean(rows, None if mask is None else jnp.tile(mask, rows.shape[0] // mask.shape[0]))
        parts["kl"] = kl
        parts["info_loss"] = config.info_factor * kl * scale
        total = total + beta * parts["info_loss"]
    if output.quantizer is not None:
        q = output.quantizer
        parts["vq_loss"] = q.vq_loss
        parts["commit_loss"] = q.commit_loss
        parts["qt_loss"] = config.vq_coef * q.vq_loss + config.commit_coef * q.commit_loss
        total = total + parts["qt_loss"]
    if output.aux_logits is not None:
        parts["aux_ce"] = cross_entropy(output.aux_logits, labels, mask)
        parts["aux_loss"] = config.aux_coef * parts["aux_ce"] * scale
        total = total + parts["aux_loss"]
    parts["total"] = total
    return total, parts


OFFICIAL = dict(beta=1e-2, kl_form="official", units="bits", vq_coef=0.4, commit_coef=0.1)  # c: per backbone


def official_objective(model_name: str, **overrides: float | str) -> ObjectiveConfig:
    """The official objective of a registered model: :data:`OFFICIAL` with its factor c, and overrides."""
    from ib_attention_jax.models.registry import get_spec

    kwargs: dict = {**OFFICIAL, "info_factor": get_spec(model_name).info_factor}
    kwargs.update(overrides)
    return ObjectiveConfig(**kwargs)
