"""The per-device train and eval steps, written pmap-style over the ``data`` axis.

The same functions run under ``jax.shard_map`` (default) and ``jax.pmap``; gradients
and loss parts are averaged with ``lax.pmean`` over ``data``, and BatchNorm (built with
``bn_axis_name="data"``) normalises with and keeps running statistics of the global
batch, so any number of devices computes what one device computes on the global batch.
The attention and latent noise of an example is a function of (step key, global example
index), which makes this hold for the stochastic forward too (dropout masks do depend on
the device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from ib_attention_jax.objectives import ObjectiveConfig, aib_loss
from ib_attention_jax.training.optimizers import ema_update
from ib_attention_jax.training.state import TrainState

AXIS = "data"
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    objective: ObjectiveConfig = ObjectiveConfig()
    num_samples: int = 1  # attention x latent samples in training (official: 1)
    beta_warmup_steps: int = 0  # beta ramps linearly from 0 over these steps (0: off)
    ema_decay: float = 0.0  # 0: no weight EMA
    eval_num_samples: int = 4  # official CIFAR: 4 (16 logit samples); CUB: 12


def step_rngs(key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """The RNG streams of one step from the base key (dropout is made per-device by the caller)."""
    k = jax.random.fold_in(key, step)
    ka, kl, kd = jax.random.split(k, 3)
    return {"attention": ka, "latent": kl, "dropout": kd}


def _example_ids(batch: Batch) -> jax.Array:
    return batch["index"].astype(jnp.int32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: StepConfig
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure per-device train step ``(state, batch) -> (state, metrics)``.

    ``batch`` holds ``image`` (b, H, W, 3), ``label`` (b,) and ``index`` (b,), the
    examples' positions in the global batch.
    """

    def train_step(state: TrainState, batch: Batch):
        rngs = step_rngs(state.key, state.step)
        rngs["dropout"] = jax.random.fold_in(rngs["dropout"], lax.axis_index(AXIS))
        beta = config.objective.beta
        if config.beta_warmup_steps:
            beta = beta * jnp.minimum(1.0, state.step.astype(jnp.float32) / config.beta_warmup_steps)

        def loss_fn(params):
            out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                       train=True, num_samples=config.num_samples, example_ids=_example_ids(batch),
                                       rngs=rngs, mutable=["batch_stats"])
            loss, parts = aib_loss(out, batch["label"], config.objective, beta=beta)
            return loss, (out, parts, mutated.get("batch_stats", {}))

        grads, (out, parts, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, AXIS)
        batch_stats = _replicated_batch_stats(batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = _update_ema(ema, {"params": params, "batch_stats": batch_stats}, config.ema_decay)
        metrics = dict(parts)
        metrics["accuracy"] = jnp.mean(jnp.argmax(out.logits, -1) == batch["label"])
        metrics["beta"] = jnp.asarray(beta, jnp.float32)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics = lax.pmean(metrics, AXIS)
        if out.quantizer is not None:
            usage = lax.psum(out.quantizer.usage, AXIS)
            p = usage / jnp.maximum(jnp.sum(usage), 1.0)
            metrics["anchor_perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)))
            metrics["anchors_used"] = jnp.sum(usage > 0).astype(jnp.float32)
            metrics["anchor_usage"] = usage
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


def _replicated_batch_stats(batch_stats):
    """The running statistics every device keeps: already global where BatchNorm has the ``data``
    axis (then the float ``pmean`` changes nothing), the mean over devices for a model built
    without it. The integer step counters are equal on every device and stay integers."""
    return jax.tree_util.tree_map(lambda x: lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                  batch_stats)


def _update_ema(ema, new, decay: float):
    """The weight EMA of params and BatchNorm statistics. An integer leaf (a BatchNorm's
    ``num_batches_tracked``) is not averaged into a float: the EMA copy holds the model's count."""
    averaged = ema_update(ema, new, decay)
    return jax.tree_util.tree_map(lambda a, n: a if jnp.issubdtype(n.dtype, jnp.floating) else n, averaged, new)


def make_eval_step(model: nn.Module, config: StepConfig, eval_key: jax.Array, use_ema: bool = False
                   ) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """A per-device eval step returning per-example outputs (gathered by the caller).

    Monte-Carlo predictions use ``config.eval_num_samples`` x the same number of latent
    samples with noise from (``eval_key``, example index), so evaluation is
    deterministic and independent of the device count; the mean path has zero noise.
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, Any]:
        variables = state.variables(use_ema)
        ids = _example_ids(batch)
        ka, kl = jax.random.split(eval_key)
        mc = model.apply(variables, batch["image"], train=False, num_samples=config.eval_num_samples,
                         example_ids=ids, rngs={"attention": ka, "latent": kl})
        mean = model.apply(variables, batch["image"], train=False, deterministic=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(mean.logits, batch["label"])
        result = {"pred_mc": jnp.argmax(mc.logits, -1), "pred_mean": jnp.argmax(mean.logits, -1), "ce_mean": ce}
        if mean.attention is not None:
            result["attention"] = mean.attention.mean[..., 0]  # (b, h, w) the mean map
            if mean.quantizer is not None:
                result["attention_q"] = mean.attention_used[0, ..., 0]
        return result

    return eval_step
