"""The train step: one pure function, on one device or data-parallel over an axis.

``make_train_step(model, tx, config)`` is a single-device step for ``jax.jit``;
``axis_name="data"`` makes the same function the per-device step of a data-parallel run
(``runtime/parallel.py`` runs it under ``jax.shard_map`` or ``jax.pmap``): gradients and loss
parts are averaged with ``lax.pmean`` over the axis, and BatchNorm (built with
``bn_axis_name="data"``) normalises with and keeps running statistics of the global batch, so
any number of devices computes what one device computes on the global batch. The attention and
latent noise of an example is a function of (step key, global example index), which makes this
hold for the stochastic forward too (dropout masks do depend on the device). The loss itself is
:func:`compute_loss`, for a loop of one's own. The eval step is ``evaluation/step.py``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from ib_attention_jax.models.aib import ModelOutput
from ib_attention_jax.objectives import ObjectiveConfig, aib_loss, masked_mean
from ib_attention_jax.runtime.parallel import example_ids
from ib_attention_jax.training.optimizers import ema_update
from ib_attention_jax.training.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    objective: ObjectiveConfig = ObjectiveConfig()
    num_samples: int = 1  # attention x latent samples in training (official: 1)
    beta_warmup_steps: int = 0  # beta ramps linearly from 0 over these steps (0: off)
    ema_decay: float = 0.0  # 0: no weight EMA
    eval_num_samples: int = 4  # official CIFAR: 4 (16 logit samples); CUB: 12


class LossAux(NamedTuple):
    """What :func:`compute_loss` returns beside the loss."""

    output: ModelOutput
    parts: dict[str, jax.Array]  # aib_loss's parts: ce, kl, class_loss, info_loss, ..., total
    batch_stats: Any  # the updated BatchNorm statistics ({} for a model without BatchNorm)


def step_rngs(key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """The RNG streams of one step from the base key (dropout is made per-device by the caller)."""
    k = jax.random.fold_in(key, step)
    ka, kl, kd = jax.random.split(k, 3)
    return {"attention": ka, "latent": kl, "dropout": kd}


def compute_loss(params: Any, batch_stats: Any, batch: Batch, rngs: dict[str, jax.Array], *, model: nn.Module,
                 objective: ObjectiveConfig | None = None, num_samples: int = 1,
                 beta: jax.Array | float | None = None, train: bool = True) -> tuple[jax.Array, LossAux]:
    """The AIB loss of one batch: ``(loss, LossAux(output, parts, batch_stats))``, for ``jax.grad(...,
    has_aux=True)`` (the gradient is with respect to ``params``).

    ``batch`` holds ``image`` (b, H, W, C), ``label`` (b,) and optionally ``index`` (b,) (the noise
    keys; default ``arange(b)``) and ``mask`` (b,) (padding rows excluded from the loss). ``rngs``
    has the ``attention`` and ``latent`` streams (and ``dropout`` for models with dropout). The
    model is called as every registered model is: ``model.apply(variables, image, train=,
    num_samples=, example_ids=, rngs=, mutable=["batch_stats"])``. ``objective`` defaults to
    ``ObjectiveConfig()``; ``beta`` overrides its ``beta`` (a warm-up).
    """
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=train,
                               num_samples=num_samples, example_ids=example_ids(batch), rngs=rngs,
                               mutable=["batch_stats"])
    loss, parts = aib_loss(out, batch["label"], objective or ObjectiveConfig(), beta=beta, mask=batch.get("mask"))
    return loss, LossAux(out, parts, mutated.get("batch_stats", {}))


def warmed_up_beta(config: StepConfig, step: jax.Array) -> jax.Array | float:
    """``objective.beta``, ramped linearly from 0 over ``beta_warmup_steps`` when that is set."""
    beta = config.objective.beta
    if config.beta_warmup_steps:
        beta = beta * jnp.minimum(1.0, step.astype(jnp.float32) / config.beta_warmup_steps)
    return beta


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: StepConfig = StepConfig(),
                    axis_name: str | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure train step ``(state, batch) -> (state, metrics)`` around :func:`compute_loss`.

    ``axis_name=None``: one device, for ``jax.jit`` (``batch["index"]`` optional). With an axis name
    the step is the per-device step of a data-parallel run over that mapped axis: gradients, metrics
    and BatchNorm statistics are averaged over it, anchor usage summed, dropout made per device, and
    ``batch["index"]`` should hold the examples' positions in the global batch.
    :class:`~ib_attention_jax.runtime.parallel.Runner` runs a step made without one over its
    ``data`` axis (``train_step.for_axis(name)`` is the same step for another axis).
    """

    def train_step(state: TrainState, batch: Batch):
        rngs = step_rngs(state.key, state.step)
        if axis_name is not None:
            rngs["dropout"] = jax.random.fold_in(rngs["dropout"], lax.axis_index(axis_name))
        beta = warmed_up_beta(config, state.step)
        grads, (out, parts, batch_stats) = jax.grad(compute_loss, has_aux=True)(
            state.params, state.batch_stats, batch, rngs, model=model, objective=config.objective,
            num_samples=config.num_samples, beta=beta)
        grads = _mean(grads, axis_name)
        batch_stats = _replicated_batch_stats(batch_stats, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = _update_ema(ema, {"params": params, "batch_stats": batch_stats}, config.ema_decay)
        metrics = dict(parts)
        metrics["accuracy"] = masked_mean((jnp.argmax(out.logits, -1) == batch["label"]).astype(jnp.float32),
                                          batch.get("mask"))
        metrics["beta"] = jnp.asarray(beta, jnp.float32)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics = _mean(metrics, axis_name)
        if out.quantizer is not None:
            usage = out.quantizer.usage if axis_name is None else lax.psum(out.quantizer.usage, axis_name)
            p = usage / jnp.maximum(jnp.sum(usage), 1.0)
            metrics["anchor_perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)))
            metrics["anchors_used"] = jnp.sum(usage > 0).astype(jnp.float32)
            metrics["anchor_usage"] = usage
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema=ema)
        return new_state, metrics

    train_step.axis_name = axis_name
    train_step.for_axis = lambda name: make_train_step(model, tx, config, name)
    return train_step


def _mean(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def _replicated_batch_stats(batch_stats, axis_name: str | None):
    """The running statistics every device keeps: already global where BatchNorm has the axis
    (then the float ``pmean`` changes nothing), the mean over devices for a model built
    without it. The integer step counters are equal on every device and stay integers."""
    if axis_name is None:
        return batch_stats
    return jax.tree_util.tree_map(
        lambda x: lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, batch_stats)


def _update_ema(ema, new, decay: float):
    """The weight EMA of params and BatchNorm statistics. An integer leaf (a BatchNorm's
    ``num_batches_tracked``) is not averaged into a float: the EMA copy holds the model's count."""
    averaged = ema_update(ema, new, decay)
    return jax.tree_util.tree_map(lambda a, n: a if jnp.issubdtype(n.dtype, jnp.floating) else n, averaged, new)

