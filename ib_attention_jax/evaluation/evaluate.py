"""One pass over an evaluation split: Monte-Carlo and mean accuracy, localisation and attention quality.

Predictions come back per example with the pipeline's padding mask, so every example
counts exactly once on any number of hosts. Where the batches carry ground-truth
boxes, the mean attention map is scored by the pointing game and the share of
attention mass inside the box. With ``attention_metrics`` options, the first examples
of each host are also scored by deletion and insertion against the random order
(``attention_metrics.py``); QT models report how the test maps use their anchors.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_attention_jax.evaluation.attention_metrics import (
    CURVES,
    anchor_statistics,
    deletion_insertion,
    nearest_anchor_index,
)
from ib_attention_jax.evaluation.localization import box_area_fraction, energy_in_box, pointing_game
from ib_attention_jax.evaluation.step import MAP_PREFIX
from ib_attention_jax.runtime.parallel import Runner, host_batch_index

LOCALIZATION_KEYS = ("pointing_game", "energy_in_box", "box_area_fraction")
_step_names = itertools.count()


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    examples: dict[str, np.ndarray]  # the first examples of this host: images, maps, labels, predictions
    attention: dict[str, Any] = dataclasses.field(default_factory=dict)  # deletion/insertion curves, anchors

    def summary_entries(self) -> dict[str, Any]:
        """What ``summary.json`` records beyond accuracy: localisation, attention quality, anchor usage."""
        entries = {k: self.metrics[k] for k in LOCALIZATION_KEYS if k in self.metrics}
        entries.update(self.attention)
        return entries


@dataclasses.dataclass(frozen=True)
class AttentionMetricsOptions:
    """How deletion/insertion are measured, and the model whose mean path they score.

    num_examples: test examples per host (the first ones; 0 turns deletion/insertion off); steps: fractions
    0, 1/steps, ..., 1; baseline: "mean" or "blur" (see ``attention_metrics``); use_ema: score the EMA weights.
    """

    model: Any
    num_examples: int = 500
    steps: int = 16
    baseline: str = "mean"
    seed: int = 0
    use_ema: bool = False


def attention_metrics_options(config, model) -> AttentionMetricsOptions:
    """The options a run's config asks for (``attention_metrics_*`` keys, see configs/base.py)."""
    return AttentionMetricsOptions(model=model, num_examples=int(config.get("attention_metrics_examples", 500)),
                                   steps=int(config.get("attention_metrics_steps", 16)),
                                   baseline=config.get("attention_metrics_baseline", "mean"),
                                   seed=int(config.get("seed", 0)), use_ema=bool(config.get("eval_ema", False)))


def _allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sums host-local totals over hosts (identity on one host)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def _allreduce_min(value: int) -> int:
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.process_allgather(np.asarray([value]))).min())


def find_anchors(params: Any) -> np.ndarray | None:
    """The (Q,) anchor values of a QT model's parameters (the first ``anchors`` leaf), or None."""
    if isinstance(params, dict) or hasattr(params, "items"):
        for key, value in params.items():
            if key == "anchors" and not hasattr(value, "items"):
                return value
            found = find_anchors(value)
            if found is not None:
                return found
    return None


def _host_anchors(runner: Runner, state: Any, use_ema: bool) -> np.ndarray | None:
    source = state.ema["params"] if use_ema and getattr(state, "ema", None) is not None else state.params
    leaf = find_anchors(source)
    return None if leaf is None else np.asarray(runner.unreplicate(leaf), np.float32).reshape(-1)


def make_probability_step(model: Any, use_ema: bool = False) -> Callable:
    """Per-device ``(state, batch) -> {"probability": (b,)}``: the true-class softmax of the mean path."""

    def probability_step(state, batch):
        out = model.apply(state.variables(use_ema), batch["image"], train=False, deterministic=True)
        p = jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
        return {"probability": jnp.take_along_axis(p, batch["label"][:, None].astype(jnp.int32), axis=1)[:, 0]}

    return probability_step


def chunked_step_fn(runner: Runner, step: Callable, state: Any, chunk: int, key: str) -> Callable:
    """``(images, labels) -> (n,)`` output ``key`` of ``step``, run in zero-padded chunks of ``chunk`` rows."""

    def run(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        n = len(images)
        out = []
        for start in range(0, max(n, 1), chunk):
            x, y = images[start:start + chunk], np.asarray(labels[start:start + chunk], np.int32)
            pad = chunk - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros(pad, np.int32)])
            feed = {"image": x.astype(np.float32), "label": y, "index": host_batch_index(chunk)}
            out.append(np.asarray(runner.gather(step(state, runner.shard_batch(feed)))[key])[:chunk - pad])
        return np.concatenate(out)[:n]

    return run


def _deletion_insertion(runner: Runner, state: Any, options: AttentionMetricsOptions,
                        rows: dict[str, np.ndarray], chunk: int) -> dict[str, Any]:
    """Mean deletion/insertion areas and curves over this host's first examples, reduced over hosts."""
    n = _allreduce_min(min(options.num_examples, len(rows["label"])))
    if n == 0:
        return {}
    step = runner.compile_eval_step(make_probability_step(options.model, options.use_ema),
                                    name=f"mean_probability_step_{next(_step_names)}")
    probability = chunked_step_fn(runner, step, state, chunk, "probability")
    rng = np.random.default_rng([options.seed, jax.process_index()])
    sums = np.zeros((len(CURVES), options.steps + 2))  # per curve: sum of areas, sums of the curve points
    fractions = None
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        curves = deletion_insertion(probability, rows["image"][part], rows["label"][part], rows["attention"][part],
                                    steps=options.steps, baseline=options.baseline, rng=rng)
        fractions = curves.fractions
        areas = curves.auc()
        for i, name in enumerate(CURVES):
            sums[i, 0] += areas[name].sum()
            sums[i, 1:] += curves.curves[name].sum(axis=0)
    total = _allreduce_sum(np.concatenate([sums.reshape(-1), [float(n)]]))
    count = total[-1]
    means = total[:-1].reshape(sums.shape) / count
    out: dict[str, Any] = {"attention_metrics_examples": int(count), "attention_metrics_baseline": options.baseline,
                           "curve_fractions": fractions.tolist()}
    for i, name in enumerate(CURVES):
        stem, _, random = name.partition("_")
        out[f"{stem}_auc" + ("_random" if random else "")] = float(means[i, 0])
        out[f"{stem}_curve" + ("_random" if random else "")] = means[i, 1:].tolist()
    return out


def evaluate(runner: Runner, eval_step: Callable, state: Any, batches: Iterable[dict[str, np.ndarray]],
             image_size: int, keep_examples: int = 0,
             attention_metrics: AttentionMetricsOptions | None = None) -> EvalResult:
    """Runs ``eval_step`` over ``batches`` and reduces the per-example outputs over the mask.

    ``attention_metrics``: also score the mean maps by deletion and insertion (None: skip). Anchor usage of
    QT models is always reported.
    """
    totals = np.zeros(7, np.float64)  # count, correct_mc, correct_mean, ce, pointing, energy, area
    kept: dict[str, list[np.ndarray]] = {}
    scored: dict[str, list[np.ndarray]] = {}  # examples for deletion/insertion
    want_scored = attention_metrics.num_examples if attention_metrics is not None else 0
    anchors, usage = None, None
    per_map: dict[str, np.ndarray] = {}  # map name -> (pointing hits, energy in box) of models with several maps
    has_boxes = False
    offset = 0
    chunk = 0
    for batch in batches:
        local_b = batch["image"].shape[0]
        chunk = chunk or local_b
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
        map_names = [k[len(MAP_PREFIX):] for k in out if k.startswith(MAP_PREFIX)]
        if "box" in batch and "attention" in out:
            has_boxes = True
            maps, boxes = out["attention"], batch["box"]
            totals[4] += np.sum(pointing_game(maps, boxes, image_size) & mask)
            totals[5] += np.sum(energy_in_box(maps, boxes, image_size) * mask)
            totals[6] += np.sum(box_area_fraction(boxes, image_size) * mask)
            for name in map_names:
                one = out[MAP_PREFIX + name]
                per_map.setdefault(name, np.zeros(2))
                per_map[name] += (np.sum(pointing_game(one, boxes, image_size) & mask),
                                  np.sum(energy_in_box(one, boxes, image_size) * mask))
        if "attention_q" in out:
            if anchors is None:
                anchors = _host_anchors(runner, state, attention_metrics.use_ema if attention_metrics else False)
                usage = np.zeros(len(anchors), np.float64)
            index = nearest_anchor_index(np.asarray(out["attention_q"])[mask], anchors)
            usage += np.bincount(index.reshape(-1), minlength=len(anchors))
        if want_scored and "attention" in out and sum(len(v) for v in scored.get("label", [])) < want_scored:
            values = [("image", batch["image"]), ("label", label), ("attention", out["attention"])]
            values += [(MAP_PREFIX + name, out[MAP_PREFIX + name]) for name in map_names]
            for key, value in values:
                scored.setdefault(key, []).append(np.asarray(value)[mask])
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
    attention: dict[str, Any] = {}
    for name, sums in sorted(per_map.items()):  # each map of a model with several, beside their mean above
        hits, energy = _allreduce_sum(sums)
        attention.update({f"pointing_game_{name}": hits / n, f"energy_in_box_{name}": energy / n})
    if usage is not None:
        attention.update(anchor_statistics(_allreduce_sum(usage), anchors))
    if want_scored and scored:
        rows = {k: np.concatenate(v) for k, v in scored.items()}
        attention.update(_deletion_insertion(runner, state, attention_metrics, rows, chunk))
        for key in [k for k in rows if k.startswith(MAP_PREFIX)]:
            name = key[len(MAP_PREFIX):]
            one = _deletion_insertion(runner, state, attention_metrics, {**rows, "attention": rows[key]}, chunk)
            attention.update({f"{m}_{name}": one[m] for m in ("deletion_auc", "insertion_auc") if m in one})
    metrics.update({k: float(v) for k, v in attention.items() if isinstance(v, (int, float))})
    examples = {k: np.concatenate(v)[:keep_examples] for k, v in kept.items()}
    return EvalResult(metrics=metrics, examples=examples, attention=attention)
