"""The CLI's modes: train, evaluate the latest checkpoint, export attention maps.

Every mode opens the workdir through ``workdir.open_run``: the config is checked, compared with the
workdir's own, and (evaluation, export) the workdir is checked writable before any work starts.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections
import numpy as np

from ib_attention_jax.data.prepare import ensure_embedded
from ib_attention_jax.errors import ConfigError, UserError
from ib_attention_jax.evaluation.evaluate import attention_metrics_options, evaluate
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import build_experiment, eval_batches, normalization_constants, train_and_evaluate
from ib_attention_jax.training.parallel import Runner
from ib_attention_jax.training.paths import as_path, atomic_write_text
from ib_attention_jax.training.step import make_eval_step
from ib_attention_jax.training.workdir import Run, open_run


class NoCheckpointError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint to evaluate."""


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    summary = train_and_evaluate(config, workdir)
    summary["workdir"] = str(as_path(workdir))
    if "stopped_at_step" not in summary:
        print(f"outputs in {summary['workdir']}: summary.json, metrics.jsonl, checkpoints/, attention_overlays.png",
              flush=True)
    return summary


def _restore(run: Run):
    """(experiment, state, step) of the run's latest checkpoint."""
    if report := run.describe_changes("this evaluation differs from the workdir's own config in"):
        print(report, flush=True)
    config = run.config
    ensure_embedded(config.dataset, config.get("data_dir"))
    exp = build_experiment(config)
    checkpointer = Checkpointer(run.workdir / "checkpoints", config.get("keep_checkpoints", 3), run_id=run.run_id)
    restored = checkpointer.restore(exp.state)
    if restored is None:
        raise NoCheckpointError(f"no checkpoint in {checkpointer.directory}; train first (--mode=train)")
    state, _, step = restored
    return exp, state, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Monte-Carlo and mean accuracy of the latest checkpoint on the eval split (``eval.json``)."""
    with open_run(config, workdir, train=False) as run:
        return _evaluate(run)


def _evaluate(run: Run) -> dict[str, Any]:
    config, workdir = run.config, run.workdir
    exp, state, step = _restore(run)
    runner = Runner(config.get("parallel", "shard_map"))
    eval_step = runner.compile_eval_step(make_eval_step(exp.model, exp.step_config, exp.eval_key,
                                                        use_ema=config.get("eval_ema", False)))
    result = evaluate(runner, eval_step, runner.replicate(state), eval_batches(config, exp, exp.info.eval_split),
                      exp.image_size, attention_metrics=attention_metrics_options(config, exp.model))
    summary = {"step": step, "eval_split": exp.info.eval_split, **result.metrics, **result.summary_entries()}
    atomic_write_text(as_path(workdir) / "eval.json", json.dumps(summary, indent=2))
    return summary


def export_attention(config: ml_collections.ConfigDict, workdir: str, num_images: int = 20) -> dict[str, Any]:
    """PNGs of the first test images, their continuous maps and (QT models) quantised maps."""
    with open_run(config, workdir, train=False) as run:
        return _export_attention(run, num_images)


def _export_attention(run: Run, num_images: int) -> dict[str, Any]:
    from ib_attention_jax.evaluation.overlays import denormalize, save_attention_grid, save_attention_maps

    config, workdir = run.config, run.workdir
    exp, state, step = _restore(run)
    runner = Runner(config.get("parallel", "shard_map"))
    eval_step = runner.compile_eval_step(make_eval_step(exp.model, exp.step_config, exp.eval_key))
    result = evaluate(runner, eval_step, runner.replicate(state), eval_batches(config, exp, exp.info.eval_split),
                      exp.image_size, keep_examples=num_images)
    ex = result.examples
    if "attention" not in ex:
        raise ConfigError(f"{config.model} has no attention map to export")
    mean, std = normalization_constants(config)
    images = denormalize(ex["image"], mean, std)
    out_dir = pathlib.Path(workdir) / "attention_maps"  # local: the PNG writers need a file system
    files = save_attention_maps(out_dir, images, ex["attention"], quantized_maps=ex.get("attention_q"))
    grid = save_attention_grid(out_dir / "grid.png", images, ex["attention"], labels=ex["label"],
                               predictions=ex["pred_mc"], quantized_maps=ex.get("attention_q"), boxes=ex.get("box"))
    return {"step": step, "directory": str(out_dir), "files": len(files), "grid": str(grid),
            "correct": int(np.sum(ex["label"] == ex["pred_mc"]))}
