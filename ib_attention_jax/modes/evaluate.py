"""``--mode=evaluate``: Monte-Carlo and mean accuracy of the workdir's latest checkpoint, ``eval.json``."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from ib_attention_jax.evaluation.evaluate import attention_metrics_options, evaluate
from ib_attention_jax.evaluation.step import make_eval_step
from ib_attention_jax.modes.restore import restore_latest
from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.runtime.paths import as_path
from ib_attention_jax.training.loop import eval_batches
from ib_attention_jax.training.workdir import Run, open_run


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Monte-Carlo and mean accuracy on the eval split (``eval.json``) of the latest checkpoint or,
    in a workdir without one, of the weights ``config.init_from`` names (e.g. an official checkpoint)."""
    initialize_distributed(config)
    if config.get("init_from"):
        as_path(workdir).mkdir(parents=True, exist_ok=True)
    with open_run(config, workdir, train=False) as run:
        return _evaluate(run)


def _evaluate(run: Run) -> dict[str, Any]:
    config = run.config
    exp, state, step = restore_latest(run)
    runner = Runner(config.get("parallel", "shard_map"))
    eval_step = runner.compile_eval_step(make_eval_step(exp.model, exp.step_config, exp.eval_key,
                                                        use_ema=config.get("eval_ema", False)))
    result = evaluate(runner, eval_step, runner.replicate(state), eval_batches(config, exp, exp.info.eval_split),
                      exp.image_size, attention_metrics=attention_metrics_options(config, exp.model))
    summary = {"step": step, "eval_split": exp.info.eval_split, **result.metrics, **result.summary_entries()}
    if step == 0 and config.get("init_from"):
        summary["init_from"] = str(config.init_from)
    if jax.process_index() == 0:  # the metrics are over every host's examples: one file
        atomic_write_text(run.workdir / "eval.json", json.dumps(summary, indent=2))
    return summary
