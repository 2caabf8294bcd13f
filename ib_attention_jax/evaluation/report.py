"""``report.html``: one self-contained page per run (``--mode=report``, ``modes/report.py``), every plot a
base64 PNG inside it.

The page is built from what a run leaves in its workdir: ``metrics.jsonl`` (training curves),
``summary.json`` or ``eval.json`` (the evaluation table, deletion/insertion curves, anchor usage),
``probe.json`` (the linear probe) and ``attention_overlays.png`` (the overlay grid). It needs no server,
no script and no file next to it, so it can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ib_attention_jax.errors import UserError
from ib_attention_jax.evaluation import plots
from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.paths import as_path

__all__ = ["EVAL_ROWS", "NothingToReportError", "html_page", "img_tag", "read_metrics", "table_html",
           "write_run_report"]



class NothingToReportError(UserError, FileNotFoundError):
    """The workdir holds no run outputs."""


# The evaluation table: summary key -> what it is.
EVAL_ROWS: dict[str, str] = {
    "test_accuracy_mc": "test accuracy, Monte-Carlo (n x n samples)",
    "test_accuracy_mean": "test accuracy, mean path (no noise)",
    "test_ce_mean": "test cross-entropy, mean path (nats)",
    "pointing_game": "pointing game (map maximum inside the box)",
    "energy_in_box": "attention mass inside the box",
    "box_area_fraction": "image share the boxes cover (chance level of the mass in the box)",
    "deletion_auc": "deletion AUC, attention order (lower is better)",
    "deletion_auc_random": "deletion AUC, random order",
    "insertion_auc": "insertion AUC, attention order (higher is better)",
    "insertion_auc_random": "insertion AUC, random order",
    "attention_metrics_examples": "test examples scored by deletion/insertion",
    "anchors_used": "anchors used by the test maps",
    "num_anchors": "anchors",
    "anchor_perplexity": "anchor perplexity (exp of the usage entropy)",
    "probe_accuracy": "linear probe accuracy, pooled features",
    "probe_accuracy_latent": "linear probe accuracy, latent mean",
    "num_eval_examples": "test examples",
    "steps": "training steps",
    "train_images_per_second": "training images/s",
    "wall_seconds": "wall seconds, training and evaluation",
}

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG itself as a data URI."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits (integers as they are), None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value)
                                  and abs(value) >= 1):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return html.escape(str(value))


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], name_columns: int = 1) -> str:
    """A plain HTML table; the first ``name_columns`` columns are left-aligned text."""
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="name"' if i < name_columns else ""
        return f"<{tag}{cls}>{v if tag == 'th' else format_value(v)}</{tag}>"

    head = "".join(cell("th", i, html.escape(str(h))) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, sections: Sequence[tuple[str, str]], subtitle: str = "") -> str:
    """A complete page: a title, an optional note, then (heading, HTML) sections."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="note">{subtitle}</p>')
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def read_metrics(path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, as a killed run leaves, is skipped)."""
    path = as_path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _read_json(path) -> dict[str, Any] | None:
    path = as_path(path)
    return json.loads(path.read_text()) if path.exists() else None


def evaluation_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(key, meaning, value) for every `EVAL_ROWS` entry the summary holds."""
    return [(key, meaning, summary[key]) for key, meaning in EVAL_ROWS.items() if key in summary]


def _figure(png: bytes | None, alt: str, note: str = "") -> str | None:
    if png is None:
        return None
    return (f'<p class="note">{note}</p>' if note else "") + img_tag(png, alt)


def write_run_report(workdir, title: str | None = None) -> dict[str, Any]:
    """Writes ``workdir/report.html`` from the run's outputs; returns its path and the plots it holds."""
    root = as_path(workdir)
    records = read_metrics(root / "metrics.jsonl")
    summary = _read_json(root / "summary.json") or _read_json(root / "eval.json")
    probe = _read_json(root / "probe.json")
    if not records and summary is None:
        raise NothingToReportError(f"{root} holds neither metrics.jsonl nor summary.json; train first (--mode=train)")
    summary = dict(summary or {})
    if probe:
        summary.update(probe_accuracy=probe.get("probe_accuracy"), probe_accuracy_latent=probe.get(
            "probe_accuracy_latent"))
    sections: list[tuple[str, str]] = []
    plotted: list[str] = []

    def add(heading: str, body: str | None, plot: str | None = None) -> None:
        if body:
            sections.append((heading, body))
            if plot:
                plotted.append(plot)

    if summary:
        add("Evaluation", table_html(["metric", "what", "value"], evaluation_rows(summary), name_columns=2))
    add("Training curves", _figure(plots.training_curves(records), "training curves",
                                   "From metrics.jsonl: train records every log_every_steps, evaluation points "
                                   "as dots."), "training_curves")
    add("Deletion and insertion", _figure(
        plots.deletion_insertion(summary), "deletion and insertion curves",
        "True-class probability of the mean path while the pixels are removed (deletion) or revealed (insertion) "
        "in the order of the attention map, most attended first, against the same with a random map. "
        f"Removed pixels become the {summary.get('attention_metrics_baseline', 'mean')} baseline; "
        f"{summary.get('attention_metrics_examples', '?')} test examples."), "deletion_insertion")
    add("Anchor usage", _figure(plots.anchor_histogram(summary), "anchor usage histogram",
                                "Share of the test maps' pixels assigned to each anchor (mean path)."),
        "anchor_histogram")
    overlays = root / "attention_overlays.png"
    if overlays.exists():
        add("Attention overlays", _figure(overlays.read_bytes(), "attention overlays",
                                          "Test images, the mean attention map over them (boxes in magenta), and "
                                          "the quantised map for QT models; label and prediction above."),
            "attention_overlays")
    if probe:
        rows = [(name, r["test_accuracy"], r["train_accuracy"], r["regularization"], r["num_train"], r["num_test"],
                 r["num_features"]) for name, r in probe.get("features", {}).items()]
        add(f"Linear probe on {probe.get('dataset')}", table_html(
            ["features", "test accuracy", "train accuracy", "C", "train examples", "test examples", "dimensions"],
            rows))
    name = title or f"{summary.get('model', 'run')} on {summary.get('dataset', '?')}"
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = html_page(name, sections, subtitle=f"Work directory {html.escape(str(root))}, report written {when}.")
    path = root / "report.html"
    atomic_write_text(path, page)
    return {"report": str(path), "plots": plotted}

