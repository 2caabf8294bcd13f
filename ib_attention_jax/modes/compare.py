"""Seeded comparisons: every variant of a preset x every seed as a normal run, then one table and one page.

    python -m experiments.compare --preset=cluttered_digits --seeds=0,1,2 --workdir=runs/compare

Each (variant, seed) trains in its own workdir, ``DIR/<variant>/seed_<seed>``, through the same entry point
as ``--mode=train``, so it writes the usual ``summary.json``, ``metrics.jsonl``, checkpoints and overlays,
then (presets with a probe) ``probe.json``. A run whose ``summary.json`` exists is skipped, an interrupted
one resumes from its latest checkpoint, a finished run without its probe gets only the probe: calling the
same command again finishes what is missing. Then ``DIR/comparison.json`` (one row per variant and seed,
`ROW_KEYS`, null where a metric does not apply), ``DIR/comparison.md`` (mean and standard deviation per
variant), the plots as PNG files and ``DIR/report.html``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from ib_attention_jax.configs.official import cifar_vgg, cifar_wrn
from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.evaluation import plots
from ib_attention_jax.evaluation.report import html_page, img_tag, table_html
from ib_attention_jax.runtime.atomic import atomic_write_bytes, atomic_write_text
from ib_attention_jax.runtime.paths import as_path

ROW_KEYS = ("variant", "seed", "test_accuracy_mc", "test_accuracy_mean", "pointing_game", "energy_in_box",
            "box_area_fraction", "deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random",
            "anchors_used", "probe_accuracy")
EXTRA_KEYS = ("anchor_perplexity", "probe_accuracy_latent", "probe_dataset", "steps", "train_wall_seconds",
              "probe_wall_seconds", "workdir")
METRICS = ROW_KEYS[2:]  # the numeric columns, in table order
PLOTTED = METRICS + ("probe_accuracy_latent",)  # what the bars and ablation curves show


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a name and the config it trains (the seed is set per run)."""

    name: str
    config: Callable[[], ml_collections.ConfigDict]
    group: str | None = None  # ablation group ("beta", "anchors"), None for plain comparisons
    value: float | None = None  # the ablated parameter's value


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    variants: tuple[Variant, ...]
    probe: bool = True  # fit the linear probe on each run's default target (config.probe)
    ablations: Mapping[str, str] = dataclasses.field(default_factory=dict)  # group -> axis label


def _with(builder: Callable[[], ml_collections.ConfigDict], **changes: Any) -> Callable[[], ml_collections.ConfigDict]:
    """``builder`` followed by ``changes`` (dotted keys allowed: ``objective.beta``)."""
    def build() -> ml_collections.ConfigDict:
        config = builder()
        for key, value in changes.items():
            set_key(config, key, value)
        return config

    return build


def set_key(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets ``a.b.c`` in ``config``; a key the config does not have is an error naming it."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise KeyError(f"config has no key {dotted!r} (no {part!r})")
        node = node[part]
    if leaf not in node and not (parents and parents[-1] == "model_kwargs"):
        raise KeyError(f"config has no key {dotted!r}")
    node[leaf] = value


def _quickstart_variants() -> tuple[Variant, ...]:
    return (Variant("aib", _with(lambda: quickstart("small_aib"))),
            Variant("aib_qt", _with(lambda: quickstart("small_aib_qt"))),
            Variant("plain", _with(lambda: quickstart("small_plain"))),
            Variant("aib_beta0", _with(lambda: quickstart("small_aib"), **{"objective.beta": 0.0})))


def _baseline_variants() -> tuple[Variant, ...]:
    """AIB beside the attention methods it is compared with, all on the quickstart recipe."""
    return (Variant("aib", _with(lambda: quickstart("small_aib"))),
            Variant("aib_qt", _with(lambda: quickstart("small_aib_qt"))),
            Variant("ltpa", _with(lambda: quickstart("small_ltpa"))),
            Variant("abn", _with(lambda: quickstart("small_abn"))),
            Variant("plain", _with(lambda: quickstart("small_plain"))))


def _ablation_variants() -> tuple[Variant, ...]:
    betas = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    anchors = (2, 4, 8, 12, 20)
    aib, qt = (lambda: quickstart("small_aib")), (lambda: quickstart("small_aib_qt"))
    return (tuple(Variant(f"beta_{b:g}", _with(aib, **{"objective.beta": b}), "beta", b) for b in betas)
            + tuple(Variant(f"anchors_{q}", _with(qt, **{"model_kwargs.num_anchors": q}), "anchors", q)
                    for q in anchors))


def _official_variants(builder) -> tuple[Variant, ...]:
    return (Variant("aib", _with(lambda: builder("cifar10"))),
            Variant("plain", _with(lambda: builder("cifar10", plain=True))),
            Variant("aib_qt", _with(lambda: builder("cifar10", quantized=True))))


def _smoke_variants() -> tuple[Variant, ...]:
    tiny = {"num_steps": 6, "batch_size": 16, "eval_batch_size": 32, "train_split": "train[:512]",
            "eval_split": "test[:64]", "eval_num_samples": 2, "checkpoint_every_steps": 3, "log_every_steps": 1,
            "export_examples": 8, "attention_metrics_examples": 32, "attention_metrics_steps": 4,
            "probe.max_train_examples": 200, "probe.max_test_examples": 100, "probe.regularization": (0.1, 1.0),
            "model_kwargs.conv_impl": "xla", "progress": False}
    return (Variant("aib", _with(lambda: quickstart("small_aib"), **tiny)),
            Variant("plain", _with(lambda: quickstart("small_plain"), **tiny)))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cluttered_digits", "AIB, AIB with anchors, the plain baseline and AIB with beta = 0 (the attention "
           "without the bottleneck's pressure), each the quickstart recipe (small models, 4 epochs, CPU).",
           _quickstart_variants()),
    Preset("cluttered_digits_baselines", "AIB and AIB-QT against the attention baselines LTPA (softmax maps, "
           "weighted sums) and ABN (attention and perception branches) and the plain backbone, each the quickstart "
           "recipe on the small models.", _baseline_variants()),
    Preset("cluttered_digits_ablation", "The paper's two ablations with the quickstart recipe: beta from 1e-3 to "
           "1e-1 (small_aib) and the number of anchors from 2 to 20 (small_aib_qt).", _ablation_variants(),
           ablations={"beta": "beta", "anchors": "number of anchors"}),
    Preset("cifar10_vgg", "The official VGG recipe on CIFAR-10 (200 epochs): AIB, the plain LTPA VGG and AIB-QT "
           "(20 anchors); probed on STL-10. For accelerators.", _official_variants(cifar_vgg)),
    Preset("cifar10_wrn", "The official WRN-28-10 recipe on CIFAR-10 (200 epochs): AIB, the plain WRN and AIB-QT "
           "(50 anchors); probed on STL-10. For accelerators.", _official_variants(cifar_wrn)),
    Preset("smoke", "Two variants of a few steps on small splits: checks the whole pipeline in a minute or two.",
           _smoke_variants()),
)}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=text"]`` -> {"a.b": 1, "c": "text"}: Python literals where they parse, else strings."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"an override must be key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def run_config(variant: Variant, seed: int, data_dir: str | None, overrides: Mapping[str, Any]
               ) -> ml_collections.ConfigDict:
    """The config of one (variant, seed) run."""
    config = variant.config()
    config.seed = seed
    if data_dir is not None:
        config.data_dir = data_dir
    for key, value in overrides.items():
        set_key(config, key, value)
    return config


def _read_json(path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def build_row(variant: str, seed: int, summary: Mapping[str, Any], probe: Mapping[str, Any] | None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One comparison row from a run's summary.json and probe.json; absent metrics are None."""
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    for key in METRICS + EXTRA_KEYS:
        row[key] = summary.get(key)
    probe = probe or {}
    row["probe_accuracy"] = probe.get("probe_accuracy")
    row["probe_accuracy_latent"] = probe.get("probe_accuracy_latent")
    row["probe_dataset"] = probe.get("dataset")
    row["train_wall_seconds"] = summary.get("wall_seconds")
    row.update(extra or {})
    return row


class RunInterrupted(RuntimeError):
    """A run stopped before its evaluation (SIGTERM); the command can be run again to resume it."""


def run_one(preset: Preset, variant: Variant, seed: int, root, data_dir: str | None,
            overrides: Mapping[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains (or resumes, or skips) one run and its probe; returns its row."""
    from ib_attention_jax.modes.probe import linear_probe
    from ib_attention_jax.modes.train import train

    workdir = root / variant.name / f"seed_{seed}"
    config = run_config(variant, seed, data_dir, overrides)
    summary = _read_json(workdir / "summary.json")
    if summary is None:
        log(f"[{variant.name} seed {seed}] training in {workdir}")
        result = train(config, str(workdir))
        if "test_accuracy_mc" not in result:
            raise RunInterrupted(f"{variant.name} seed {seed} stopped at step {result.get('stopped_at_step')}; "
                                 "run the same command again to resume it")
        summary = _read_json(workdir / "summary.json") or result
    else:
        log(f"[{variant.name} seed {seed}] finished earlier: {workdir / 'summary.json'}")
    probe = _read_json(workdir / "probe.json")
    probe_seconds = None
    if preset.probe and probe is None:
        log(f"[{variant.name} seed {seed}] linear probe")
        start = time.time()
        probe = linear_probe(config, str(workdir))
        probe_seconds = time.time() - start
    return build_row(variant.name, seed, summary, probe, {"workdir": str(workdir),
                                                         "probe_wall_seconds": probe_seconds})


def _stats(values: Sequence[Any]) -> tuple[float, float, int] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def aggregate(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """variant -> metric -> {"mean", "std", "n"} (sample std over seeds; None where no run has the metric)."""
    out = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        out[v] = {}
        for m in METRICS + ("anchor_perplexity", "probe_accuracy_latent"):
            s = _stats([r.get(m) for r in mine])
            out[v][m] = None if s is None else {"mean": s[0], "std": s[1], "n": s[2]}
    return out


def _cell(stat: Mapping[str, Any] | None, percent: bool) -> str:
    if stat is None:
        return "-"
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


PERCENT_METRICS = {"test_accuracy_mc", "test_accuracy_mean", "pointing_game", "energy_in_box", "box_area_fraction",
                   "probe_accuracy", "probe_accuracy_latent"}
MD_COLUMNS = {"test_accuracy_mc": "accuracy MC %", "test_accuracy_mean": "accuracy mean %",
              "pointing_game": "pointing game %", "energy_in_box": "mass in box %", "box_area_fraction": "box area %",
              "deletion_auc": "deletion AUC", "deletion_auc_random": "deletion AUC random",
              "insertion_auc": "insertion AUC", "insertion_auc_random": "insertion AUC random",
              "anchors_used": "anchors used", "probe_accuracy": "probe %", "probe_accuracy_latent": "probe latent %"}


def markdown_table(stats: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> str:
    """The mean ± standard deviation table over seeds, one line per variant."""
    header = "| variant | seeds | " + " | ".join(MD_COLUMNS.values()) + " |"
    lines = [header, "|" + "---|" * (len(MD_COLUMNS) + 2)]
    for variant, metrics in stats.items():
        n = max((s["n"] for s in metrics.values() if s), default=0)
        cells = [_cell(metrics.get(m), m in PERCENT_METRICS) for m in MD_COLUMNS]
        lines.append(f"| {variant} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_curves(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """variant -> mean deletion/insertion curves over its seeds (from the runs' summary.json)."""
    out = {}
    for v in variants:
        summaries = [_read_json(as_path(r["workdir"]) / "summary.json") for r in rows
                     if r["variant"] == v and r.get("workdir")]
        summaries = [s for s in summaries if s and s.get("deletion_curve")]
        if summaries:
            curve = {"curve_fractions": summaries[0]["curve_fractions"]}
            for key in ("deletion_curve", "insertion_curve", "deletion_curve_random", "insertion_curve_random"):
                curve[key] = np.mean([s[key] for s in summaries], axis=0).tolist()
            out[v] = curve
    return out


def write_outputs(root, preset: Preset, rows: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """comparison.json, comparison.md, the plots and report.html under ``root``."""
    variants = [v.name for v in preset.variants if any(r["variant"] == v.name for r in rows)]
    stats = aggregate(rows, variants)
    document = {**meta, "preset": preset.name, "description": preset.description, "seeds": list(seeds),
                "row_keys": list(ROW_KEYS), "rows": list(rows), "mean_std": stats}
    atomic_write_text(root / "comparison.json", json.dumps(document, indent=2))
    md = (f"# Comparison `{preset.name}`, seeds {', '.join(map(str, seeds))}\n\n{preset.description}\n\n"
          f"Mean ± standard deviation over seeds; written {meta.get('date')}.\n\n" + markdown_table(stats, seeds))
    atomic_write_text(root / "comparison.md", md)
    figures: dict[str, tuple[bytes, str]] = {}
    plain = [v.name for v in preset.variants if v.group is None and v.name in variants]
    if plain and (png := plots.comparison_bars(rows, PLOTTED, plain)):
        figures["comparison_metrics.png"] = (png, "Every metric per variant: bars at the mean over seeds, the "
                                                  "standard deviation as error bar, one dot per seed.")
    for group, label in preset.ablations.items():
        values = {v.name: v.value for v in preset.variants if v.group == group and v.name in variants}
        if values and (png := plots.ablation_curves(rows, label, values, PLOTTED, log_x=True)):
            figures[f"ablation_{group}.png"] = (png, f"Every metric against {label} (mean ± std over seeds).")
    if (png := plots.comparison_curves(_mean_curves(rows, variants))):
        figures["deletion_insertion.png"] = (png, "Deletion and insertion curves, mean over seeds, per variant.")
    for name, (png, _) in figures.items():
        atomic_write_bytes(root / name, png)
    header = ["variant", "seed"] + [MD_COLUMNS.get(k, k) for k in METRICS]
    sections = [("Mean and standard deviation over seeds",
                 table_html(["variant", "seeds"] + list(MD_COLUMNS.values()),
                            [[v, max((s["n"] for s in stats[v].values() if s), default=0)]
                             + [_cell(stats[v].get(m), m in PERCENT_METRICS) for m in MD_COLUMNS] for v in variants],
                            name_columns=1))]
    sections += [(name.removesuffix(".png").replace("_", " "), f'<p class="note">{note}</p>' + img_tag(png, name))
                 for name, (png, note) in figures.items()]
    sections.append(("Every run", table_html(header, [[r["variant"], r["seed"]] + [r.get(k) for k in METRICS]
                                                      for r in rows], name_columns=1)))
    atomic_write_text(root / "report.html", html_page(f"Comparison: {preset.name}", sections,
                                                      subtitle=preset.description))
    return {"comparison": str(root / "comparison.json"), "plots": sorted(figures), "rows": len(rows)}


def check_request(preset: Preset, seeds: Sequence[int], data_dir: str | None, overrides: Mapping[str, Any],
                  variants: Sequence[str] | None) -> list[Variant]:
    """The chosen variants; a ValueError or KeyError names a bad variant, seed list or override before any run."""
    unknown = set(variants or ()) - {v.name for v in preset.variants}
    if unknown:
        raise ValueError(f"preset {preset.name!r} has no variant {sorted(unknown)}; it has "
                         f"{[v.name for v in preset.variants]}")
    if not seeds:
        raise ValueError("give at least one seed")
    chosen = [v for v in preset.variants if variants is None or v.name in variants]
    for v in chosen:
        run_config(v, seeds[0], data_dir, overrides)
    return chosen


def run_comparison(preset: Preset, seeds: Sequence[int], workdir, data_dir: str | None = None,
                   overrides: Mapping[str, Any] | None = None, variants: Sequence[str] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or resumes) every variant x seed of ``preset`` under ``workdir`` and writes the comparison."""
    overrides = dict(overrides or {})
    chosen = check_request(preset, seeds, data_dir, overrides, variants)
    root = as_path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = [run_one(preset, v, seed, root, data_dir, overrides, log) for v in chosen for seed in seeds]
    meta = {"date": datetime.date.today().isoformat(), "wall_seconds": time.time() - start,
            "overrides": {k: repr(v) for k, v in overrides.items()}}
    out = write_outputs(root, dataclasses.replace(preset, variants=tuple(chosen)), rows, seeds, meta)
    log(f"comparison of {len(rows)} runs in {root}: comparison.json, comparison.md, report.html, "
        + ", ".join(out["plots"]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--workdir", required=True, help="the comparison's folder: one sub-workdir per run")
    parser.add_argument("--data_dir", default=None, help="TFDS data folder (default: $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the preset's variants")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config change for every run, e.g. --override num_epochs=2 (repeatable)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    preset = PRESETS[args.preset]
    try:
        overrides = parse_overrides(args.override)
        variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
        check_request(preset, seeds, args.data_dir, overrides, variants)
    except (KeyError, ValueError) as error:
        parser.error(str(error))
    try:
        run_comparison(preset, seeds, args.workdir, args.data_dir, overrides, variants)
    except RunInterrupted as error:
        print(str(error), file=sys.stderr)
        return 3
    return 0
