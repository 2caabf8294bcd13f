"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed).

Each function takes plain data (metric records, a summary dict, comparison rows) and returns the PNG of
one figure, or None when the data holds nothing to draw, so a report shows only the plots that apply.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ablation_curves", "anchor_histogram", "comparison_bars", "comparison_curves", "deletion_insertion",
           "png_bytes", "training_curves"]

_DPI = 100
# Training-curve panels: title -> metric keys of the "train" records (drawn when present).
TRAIN_PANELS: dict[str, tuple[str, ...]] = {
    "loss parts (bits)": ("total", "class_loss", "info_loss", "qt_loss", "vq_loss", "commit_loss"),
    "KL (nats)": ("kl",),
    "accuracy": ("accuracy",),
    "learning rate": ("learning_rate",),
    "beta": ("beta",),
    "anchor perplexity": ("anchor_perplexity", "anchors_used"),
}
_EVAL_KINDS = ("eval", "validation")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()



def _probability_axes(ax, xlabel: str, ylabel: str, legend_size: int) -> None:
    """The deletion/insertion axes: fraction 0..1 against a probability, grid and legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)

def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series(records: Sequence[Mapping[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        if r.get("kind") == kind and (v := _finite(r.get(key))) is not None:
            steps.append(int(r["step"]))
            values.append(v)
    return steps, values


def _grid(n: int, columns: int = 3, size: tuple[float, float] = (4.2, 3.0)):
    plt = _pyplot()
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def training_curves(records: Sequence[Mapping[str, Any]]) -> bytes | None:
    """One panel per group of `TRAIN_PANELS` present in the records of ``metrics.jsonl``; evaluation and
    validation accuracies join the accuracy panel."""
    panels = []
    for title, keys in TRAIN_PANELS.items():
        lines = [(key, *_series(records, "train", key)) for key in keys]
        lines = [line for line in lines if line[1]]
        if title == "accuracy":
            for kind in _EVAL_KINDS:
                for key in ("accuracy_mc", "accuracy_mean"):
                    steps, values = _series(records, kind, key)
                    if steps:
                        lines.append((f"{kind} {key}", steps, values))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for label, steps, values in lines:
            marker = "o" if label.split()[0] in _EVAL_KINDS else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3, linewidth=1.2)
        positive = all(v > 0 for _, _, vs in lines for v in vs)
        if title.startswith("loss") and positive:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def deletion_insertion(summary: Mapping[str, Any]) -> bytes | None:
    """Deletion and insertion curves (true-class probability vs fraction) of the map and the random order."""
    fractions = summary.get("curve_fractions")
    if not fractions or "deletion_curve" not in summary:
        return None
    fig, axes = _grid(2, size=(4.6, 3.4))
    for ax, stem, xlabel in ((axes[0], "deletion", "fraction removed"), (axes[1], "insertion", "fraction revealed")):
        for suffix, label, style in (("", "attention order", "-"), ("_random", "random order", "--")):
            curve = summary.get(f"{stem}_curve{suffix}")
            if curve:
                auc = summary.get(f"{stem}_auc{suffix}")
                ax.plot(fractions, curve, style, label=f"{label} (AUC {auc:.3f})" if auc is not None else label)
        ax.set_title(f"{stem} (most attended first)")
        _probability_axes(ax, xlabel, "true-class probability (mean path)", legend_size=8)
    fig.tight_layout()
    return png_bytes(fig)


def anchor_histogram(summary: Mapping[str, Any]) -> bytes | None:
    """Share of test-map pixels at each anchor, labelled with the anchor's value."""
    usage, values = summary.get("anchor_usage"), summary.get("anchor_values")
    if not usage or not values:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(usage) + 1.5), 3.2))
    order = np.argsort(values)
    ax.bar(np.arange(len(usage)), np.asarray(usage)[order], color="#4477aa")
    ax.set_xticks(np.arange(len(usage)))
    ax.set_xticklabels([f"{values[i]:.2f}" for i in order], rotation=60, fontsize=7)
    ax.set_xlabel("anchor value")
    ax.set_ylabel("share of test-map pixels")
    used, perplexity = summary.get("anchors_used"), summary.get("anchor_perplexity")
    ax.set_title(f"anchor usage: {used} of {len(usage)} used, perplexity {perplexity:.2f}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float, list[float]] | None:
    vals = [float(v) for v in values if _finite(v) is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, vals


def comparison_bars(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], variants: Sequence[str]
                    ) -> bytes | None:
    """One panel per metric: a bar per variant at the mean over seeds, the standard deviation as error bar,
    each seed as a dot. Metrics no variant has are left out."""
    panels = []
    for metric in metrics:
        stats = {v: _mean_std([r.get(metric) for r in rows if r["variant"] == v]) for v in variants}
        if any(s is not None for s in stats.values()):
            panels.append((metric, stats))
    if not panels:
        return None
    fig, axes = _grid(len(panels), columns=4, size=(3.3, 3.0))
    x = np.arange(len(variants))
    for ax, (metric, stats) in zip(axes, panels, strict=True):
        means = [s[0] if s else np.nan for s in stats.values()]
        stds = [s[1] if s else 0.0 for s in stats.values()]
        ax.bar(x, means, yerr=stds, capsize=4, color="#88aadd", edgecolor="#335588")
        for i, s in enumerate(stats.values()):
            if s:
                ax.plot(np.full(len(s[2]), i), s[2], "k.", markersize=4)
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=30, fontsize=8, ha="right")
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        finite = [m for m in means if np.isfinite(m)]
        if finite and min(finite) > 0.5 * max(finite) and max(finite) <= 1.0:
            low = min(m - s for m, s in zip(means, stds, strict=True) if np.isfinite(m))
            ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(finite) + 0.05) + 0.01)
    fig.tight_layout()
    return png_bytes(fig)


def ablation_curves(rows: Sequence[Mapping[str, Any]], parameter: str, variants: Mapping[str, float],
                    metrics: Sequence[str], log_x: bool = True) -> bytes | None:
    """Metric (mean +- std over seeds) against the ablated parameter; ``variants`` maps name -> value."""
    panels = []
    for metric in metrics:
        points = []
        for name, value in sorted(variants.items(), key=lambda kv: kv[1]):
            if (s := _mean_std([r.get(metric) for r in rows if r["variant"] == name])) is not None:
                points.append((value, *s))
        if points:
            panels.append((metric, points))
    if not panels:
        return None
    fig, axes = _grid(len(panels), columns=4, size=(3.3, 2.9))
    for ax, (metric, points) in zip(axes, panels, strict=True):
        xs, means, stds = (np.array([p[i] for p in points]) for i in range(3))
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3)
        for value, _, _, vals in points:
            ax.plot(np.full(len(vals), value), vals, "k.", markersize=3)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(parameter)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def comparison_curves(curves: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Deletion and insertion curves per variant (mean over seeds), the random order dashed."""
    curves = {v: c for v, c in curves.items() if c.get("curve_fractions") and c.get("deletion_curve")}
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = _grid(2, size=(4.8, 3.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, stem in zip(axes, ("deletion", "insertion"), strict=True):
        for i, (variant, c) in enumerate(curves.items()):
            colour = colours[i % len(colours)]
            ax.plot(c["curve_fractions"], c[f"{stem}_curve"], "-", color=colour, label=variant)
            if c.get(f"{stem}_curve_random"):
                ax.plot(c["curve_fractions"], c[f"{stem}_curve_random"], "--", color=colour, alpha=0.6)
        ax.set_title(f"{stem}: attention order (solid) vs random (dashed)", fontsize=9)
        _probability_axes(ax, "fraction " + ("removed" if stem == "deletion" else "revealed"),
                          "true-class probability", legend_size=7)
    fig.tight_layout()
    return png_bytes(fig)
