"""``--mode=export_attention``: PNGs of the first test images, their continuous maps and (QT models)
quantised maps, under ``WORKDIR/attention_maps`` (local or ``gs://``)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from ib_attention_jax.errors import ConfigError
from ib_attention_jax.evaluation.evaluate import evaluate
from ib_attention_jax.evaluation.overlays import denormalize, save_attention_grid, save_attention_maps
from ib_attention_jax.evaluation.step import make_eval_step
from ib_attention_jax.modes.restore import restore_latest
from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.training.loop import eval_batches, normalization_constants
from ib_attention_jax.training.workdir import Run, open_run


def export_attention(config: ml_collections.ConfigDict, workdir: str, num_images: int = 20) -> dict[str, Any]:
    """PNGs of the first test images, their continuous maps and (QT models) quantised maps."""
    initialize_distributed(config)
    with open_run(config, workdir, train=False) as run:
        return _export_attention(run, num_images)


def _export_attention(run: Run, num_images: int) -> dict[str, Any]:
    config = run.config
    exp, state, step = restore_latest(run)
    runner = Runner(config.get("parallel", "shard_map"))
    eval_step = runner.compile_eval_step(make_eval_step(exp.model, exp.step_config, exp.eval_key))
    result = evaluate(runner, eval_step, runner.replicate(state), eval_batches(config, exp, exp.info.eval_split),
                      exp.image_size, keep_examples=num_images)
    ex = result.examples
    if "attention" not in ex:
        raise ConfigError(f"{config.model} has no attention map to export")
    written = write_attention_maps(run.workdir / "attention_maps", ex, *normalization_constants(config))
    return {"step": step, **written, "correct": int(np.sum(ex["label"] == ex["pred_mc"]))}


def write_attention_maps(out_dir: epath.Path, examples: dict[str, np.ndarray], mean, std) -> dict[str, Any]:
    """The per-image PNGs and the grid of ``examples`` (evaluate's, with attention) in ``out_dir``, local or
    remote; the first host writes them (its examples are the first test images)."""
    grid = out_dir / "grid.png"
    files = []
    if jax.process_index() == 0:
        images = denormalize(examples["image"], mean, std)
        files = save_attention_maps(out_dir, images, examples["attention"],
                                    quantized_maps=examples.get("attention_q"))
        grid = save_attention_grid(grid, images, examples["attention"], labels=examples["label"],
                                   predictions=examples["pred_mc"], quantized_maps=examples.get("attention_q"),
                                   boxes=examples.get("box"))
    return {"directory": str(out_dir), "files": len(files), "grid": str(grid)}
