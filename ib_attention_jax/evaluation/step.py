"""The eval step: per-example Monte-Carlo and mean-path predictions and the attention maps of one batch.

It needs no mapped axis, so the same function runs under ``jax.jit`` or per device
(``runtime.parallel.Runner.compile_eval_step``); training evaluates with it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ib_attention_jax.runtime.parallel import example_ids

MAP_PREFIX = "attention_map/"  # eval outputs of the individual maps of a model with several (b, h_i, w_i)
Batch = dict[str, jax.Array]


class EvalSamples(Protocol):
    """What the eval step reads of a step config (``training.step.StepConfig`` is one)."""

    eval_num_samples: int  # attention x latent samples of the Monte-Carlo prediction


class HasVariables(Protocol):
    """What the eval step reads of a state (``training.state.TrainState`` is one)."""

    def variables(self, use_ema: bool = False) -> dict[str, Any]: ...


def make_eval_step(model: nn.Module, config: EvalSamples, eval_key: jax.Array, use_ema: bool = False
                   ) -> Callable[[HasVariables, Batch], dict[str, jax.Array]]:
    """An eval step returning per-example outputs (gathered by the caller); it needs no axis, so the
    same function runs under ``jax.jit`` or per device (``batch["index"]`` optional, as in training).

    Monte-Carlo predictions use ``config.eval_num_samples`` x the same number of latent
    samples with noise from (``eval_key``, example index), so evaluation is
    deterministic and independent of the device count; the mean path has zero noise.
    """

    def eval_step(state: HasVariables, batch: Batch) -> dict[str, Any]:
        variables = state.variables(use_ema)
        ids = example_ids(batch)
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
            if mean.attention_maps is not None and len(mean.attention_maps) > 1:  # LTPA: each map beside the mean
                result.update({f"{MAP_PREFIX}{name}": m for name, m in mean.attention_maps.items()})
        return result

    return eval_step
