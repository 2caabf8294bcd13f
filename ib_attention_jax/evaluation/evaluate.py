"""One pass over an evaluation split: Monte-Carlo and mean accuracy, and localisation.

Predictions come back per example with the pipeline's padding mask, so every example
counts exactly once on any number of hosts. Where the batches carry ground-truth
boxes, the mean attention map is scored by the pointing game and the share of
attention mass inside the box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from ib_attention_jax.evaluation.localization import box_area_fraction, energy_in_box, pointing_game
from ib_attention_jax.training.parallel import Runner, host_batch_index


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    examples: dict[str, np.ndarray]  # the first examples of this host: images, maps, labels, predictions


def _allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sums host-local totals over hosts (identity on one host)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def evaluate(runner: Runner, eval_step: Callable, state: Any, batches: Iterable[dict[str, np.ndarray]],
             image_size: int, keep_examples: int = 0) -> EvalResult:
    """Runs ``eval_step`` over ``batches`` and reduces the per-example outputs over the mask."""
    totals = np.zeros(7, np.float64)  # count, correct_mc, correct_mean, ce, pointing, energy, area
    kept: dict[str, list[np.ndarray]] = {}
    has_boxes = False
    offset = 0
    for batch in batches:
        local_b = batch["image"].shape[0]
        feed = {"image": batch["image"], "label": batch["label"].astype(np.int32),
                "index": host_batch_index(local_b) + offset}
        offset += local_b * jax.process_count()
        out = runner.gather(eval_step(state, runner.shard_batch(feed)))
        mask = batch.get("mask", np.ones(local_b, bool)).astype(bool)
        label = batch["label"]
        totals[0] += mask.sum()
        totals[1] += np.sum((out["pred_mc"] == label) & mask)
        totals[2] += np.sum((out["pred_mean"] == label) & mask)
        totals[3] += np.sum(out["ce_mean"] * mask)
        if "box" in batch and "attention" in out:
            has_boxes = True
            maps, boxes = out["attention"], batch["box"]
            totals[4] += np.sum(pointing_game(maps, boxes, image_size) & mask)
            totals[5] += np.sum(energy_in_box(maps, boxes, image_size) * mask)
            totals[6] += np.sum(box_area_fraction(boxes, image_size) * mask)
        if keep_examples and sum(len(v) for v in kept.get("label", [])) < keep_examples:
            rows = {"image": batch["image"], "label": label, "pred_mc": out["pred_mc"], "pred_mean": out["pred_mean"]}
            for key in ("attention", "attention_q"):
                if key in out:
                    rows[key] = out[key]
            if "box" in batch:
                rows["box"] = batch["box"]
            for key, value in rows.items():
                kept.setdefault(key, []).append(np.asarray(value)[mask])
    totals = _allreduce_sum(totals)
    n = max(totals[0], 1.0)
    metrics = {"num_examples": float(totals[0]), "accuracy_mc": totals[1] / n, "accuracy_mean": totals[2] / n,
               "ce_mean": totals[3] / n}
    if has_boxes:
        metrics.update(pointing_game=totals[4] / n, energy_in_box=totals[5] / n, box_area_fraction=totals[6] / n)
    examples = {k: np.concatenate(v)[:keep_examples] for k, v in kept.items()}
    return EvalResult(metrics=metrics, examples=examples)
