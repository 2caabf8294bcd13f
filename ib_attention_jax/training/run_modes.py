"""The CLI's modes: train, evaluate the latest checkpoint, export attention maps.

Every mode opens the workdir through ``workdir.open_run``: the config is checked, compared with the
workdir's own, and (evaluation, export) the workdir is checked writable before any work starts.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from ib_attention_jax.configs import schema
from ib_attention_jax.data.prepare import ensure_embedded
from ib_attention_jax.data.recipes import get_recipe
from ib_attention_jax.errors import ConfigError, UserError
from ib_attention_jax.evaluation.evaluate import attention_metrics_options, evaluate
from ib_attention_jax.models.registry import get_spec
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import (
    build_experiment,
    build_model,
    eval_batches,
    init_variables,
    normalization_constants,
    train_and_evaluate,
)
from ib_attention_jax.training.parallel import Runner
from ib_attention_jax.training.paths import as_path, atomic_write_text
from ib_attention_jax.training.step import make_eval_step
from ib_attention_jax.training.workdir import Run, open_run


class NoCheckpointError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint to evaluate."""


class InitWeightsError(UserError, ValueError):
    """The weights to evaluate or export do not fit the config's model."""


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
    if restored is not None:
        state, _, step = restored
        return exp, state, step
    if exp.init_report is None:
        raise NoCheckpointError(f"no checkpoint in {checkpointer.directory}; train first (--mode=train), or "
                                "evaluate other weights with --config.init_from=FILE")
    _check_complete(exp.init_report, config)
    print(exp.init_report.format(), flush=True)
    return exp, exp.state, 0


def _check_complete(report, config: ml_collections.ConfigDict) -> None:
    """Refuses weights that leave part of the model at its random initialisation."""
    if report.num_kept:
        raise InitWeightsError(
            f"{config.init_from} does not hold every tensor of {config.model}: "
            f"{', '.join(report.group_names('kept'))} would be evaluated at their random initialisation. "
            "Check --config.model (and --config.model_kwargs) against the weights")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Monte-Carlo and mean accuracy on the eval split (``eval.json``) of the latest checkpoint or,
    in a workdir without one, of the weights ``config.init_from`` names (e.g. an official checkpoint)."""
    if config.get("init_from"):
        as_path(workdir).mkdir(parents=True, exist_ok=True)
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
    if step == 0 and config.get("init_from"):
        summary["init_from"] = str(config.init_from)
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


def export_official(config: ml_collections.ConfigDict, workdir: str, output: str) -> dict[str, Any]:
    """Writes the workdir's latest weights (or, without a checkpoint, ``config.init_from``'s) as an official
    checkpoint file in the layout of the model's official script. Opens no dataset."""
    from ib_attention_jax.interop.export import export_official as write_official
    from ib_attention_jax.interop.init_from import load_init_weights_and_ema
    from ib_attention_jax.interop.official_layouts import script_for

    if not output:
        raise ConfigError("--mode=export_official needs --output=FILE (the official checkpoint to write)")
    checkpoints = as_path(workdir) / "checkpoints"
    if checkpoints.exists() and Checkpointer(checkpoints).all_steps():
        with open_run(config, workdir, train=False) as run:
            config, source = run.config, str(run.workdir)
    elif config.get("init_from"):
        source = str(config.init_from)
    else:
        raise NoCheckpointError(f"nothing to export: {workdir} holds no checkpoint and --config.init_from is not set")
    num_classes = config.get("num_classes") or get_recipe(config.dataset).num_classes
    model = build_model(config, num_classes)
    image_size = int(schema.resolved_model_kwargs(config).get("image_size", get_spec(config.model).image_size))
    init = init_variables(model, image_size, jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
    variables, ema, report = load_init_weights_and_ema(source, model, init)
    if report.num_kept:
        raise InitWeightsError(f"{source} does not hold every tensor of {config.model}: "
                               f"{', '.join(report.group_names('kept'))} would be exported at their random "
                               "initialisation. Check --config.model (and --config.model_kwargs) against the weights")
    spec = get_spec(config.model)
    script = script_for(spec.name, spec.family, spec.plain)
    info = dict(report.info)
    written = write_official(model, variables, output, script,
                             ema_variables=ema if script == "cub" and config.get("ema_decay", 0.0) > 0 else None,
                             epoch=int(info.get("epoch", 0) or 0), step=int(info.get("step", info.get("iter", 0)) or 0),
                             learning_rate=float(config.optimizer.learning_rate), passthrough=report.passthrough)
    return {"output": written.path, "script": written.script, "source": source, "keys": written.keys,
            "ema": written.ema}
