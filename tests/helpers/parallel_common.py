"""Shared by the parallel helper scripts: the model, optimiser, batches and a few train steps through a Runner.

The scripts run in their own process (they need several simulated CPU devices, or
``jax.distributed``), so this module must be imported only after the device count
and the distributed runtime are configured.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ib_attention_jax.models.registry import create_model
from ib_attention_jax.objectives import ObjectiveConfig
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.training.optimizers import OptimizerConfig, make_optimizer
from ib_attention_jax.training.state import TrainState
from ib_attention_jax.training.step import StepConfig, make_train_step

MODEL = "small_aib_qt"
GLOBAL_BATCH = 16
NUM_STEPS = 3
IMAGE_SIZE = 32
NUM_CLASSES = 10


def global_batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``NUM_STEPS`` fixed random global batches; ``index`` holds the examples' global positions."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32),
             "index": np.arange(GLOBAL_BATCH, dtype=np.int32)} for _ in range(NUM_STEPS)]


def build():
    """(model, tx, step_config, initial host state), identical in every process."""
    model = create_model(MODEL, bn_axis_name="data")
    tx, _ = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4),
                           steps_per_epoch=NUM_STEPS, total_steps=NUM_STEPS)
    step_config = StepConfig(ObjectiveConfig(info_factor=1.0))
    init_key, state_key = jax.random.split(jax.random.PRNGKey(0))
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), deterministic=True))(
        init_key)
    state = TrainState.create(variables, tx, state_key)
    state = jax.tree_util.tree_map(np.asarray, state)  # plain host arrays: placed by each runner
    return model, tx, step_config, state


def train(runner: Runner, model, tx, step_config, state, host_batches: list[dict[str, np.ndarray]]):
    """Runs the steps; returns (host state, {metric: (steps, ...) array})."""
    train_step = runner.compile_train_step(make_train_step(model, tx, step_config))
    pstate = runner.replicate(state)
    history: list[dict[str, np.ndarray]] = []
    for batch in host_batches:
        pstate, metrics = train_step(pstate, runner.shard_batch(batch))
        history.append({k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
    final = runner.unreplicate(pstate)
    return final, {k: np.stack([h[k] for h in history]) for k in history[0]}


def flatten(label: str, final, metrics, trace_counts: dict[str, int]) -> dict[str, np.ndarray]:
    """npz entries ``label|params|a/b``, ``label|batch_stats|...``, ``label|metrics|name``, ``label|trace_counts``."""
    out = {}
    for group in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(jax.device_get(getattr(final, group)), sep="/").items():
            out[f"{label}|{group}|{path}"] = np.asarray(value)
    for name, value in metrics.items():
        out[f"{label}|metrics|{name}"] = value
    out[f"{label}|step"] = np.asarray(final.step)
    out[f"{label}|trace_counts"] = np.asarray(json.dumps(trace_counts))
    return out
