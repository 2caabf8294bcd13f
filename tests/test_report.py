"""report.html of a run: self-contained, every plot an inline PNG, all shown by a headless browser."""

import json
import pathlib

import numpy as np
import pytest
from html_check import chromium, images_in_html, render_images

from ib_attention_jax.evaluation import plots
from ib_attention_jax.evaluation.overlays import save_attention_grid
from ib_attention_jax.evaluation.report import format_value, read_metrics, table_html, write_run_report

EXPECTED_PLOTS = ["training_curves", "deletion_insertion", "anchor_histogram", "attention_overlays"]


def fake_run(workdir: pathlib.Path, quantized: bool = True) -> pathlib.Path:
    """A workdir as a QT run leaves it: metrics.jsonl (with a torn last line), summary.json, probe.json, PNG."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 201, 10):
        record = {"step": step, "kind": "train", "total": 3.0 / step ** 0.3, "class_loss": 2.5 / step ** 0.3,
                  "info_loss": 40.0 / step, "kl": 30.0 / step, "accuracy": min(1.0, step / 150),
                  "learning_rate": 1e-3, "beta": min(1.0, step / 100) * 1e-2, "images_per_second": 300.0}
        if quantized:
            record.update(anchor_perplexity=3.0 + step / 100, anchors_used=5.0, vq_loss=0.01, commit_loss=0.01)
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 200, "kind": "eval", "accuracy_mc": 0.9, "accuracy_mean": 0.89}))
    lines.append('{"step": 201, "kind": "tra')  # a run killed mid-line
    (workdir / "metrics.jsonl").write_text("\n".join(lines))
    f = np.linspace(0, 1, 17)
    summary = {"model": "small_aib_qt", "dataset": "cluttered_digits", "test_accuracy_mc": 0.95,
               "test_accuracy_mean": 0.94, "pointing_game": 0.9, "energy_in_box": 0.4, "box_area_fraction": 0.19,
               "curve_fractions": f.tolist(), "deletion_curve": ((1 - f) ** 3).tolist(),
               "deletion_curve_random": (1 - f).tolist(), "insertion_curve": (1 - (1 - f) ** 3).tolist(),
               "insertion_curve_random": f.tolist(), "deletion_auc": 0.25, "deletion_auc_random": 0.5,
               "insertion_auc": 0.75, "insertion_auc_random": 0.5, "attention_metrics_examples": 500,
               "attention_metrics_baseline": "mean"}
    if quantized:
        summary.update(anchors_used=5, num_anchors=8, anchor_perplexity=3.4,
                       anchor_values=np.linspace(0, 1, 8).tolist(), anchor_usage=[0, 0.1, 0.4, 0.3, 0.1, 0.1, 0, 0])
    (workdir / "summary.json").write_text(json.dumps(summary))
    (workdir / "probe.json").write_text(json.dumps({"dataset": "cluttered_digits_shifted", "probe_accuracy": 0.6,
                                                     "probe_accuracy_latent": 0.55, "features": {
        "pooled_features": {"test_accuracy": 0.6, "train_accuracy": 0.7, "regularization": 1.0, "num_train": 5000,
                            "num_test": 2000, "num_features": 32}}}))
    rng = np.random.default_rng(0)
    save_attention_grid(workdir / "attention_overlays.png", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                        rng.random((4, 16, 16)), labels=[1, 2, 3, 4], predictions=[1, 2, 0, 4])
    return workdir


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    workdir = fake_run(tmp_path_factory.mktemp("run"))
    return workdir / "report.html", write_run_report(workdir)


def test_report_is_one_file_with_every_plot_as_a_decodable_png(report):
    path, result = report
    assert result["plots"] == EXPECTED_PLOTS
    text = path.read_text()
    images = images_in_html(text)
    assert [alt for alt, _ in images] == ["training curves", "deletion and insertion curves", "anchor usage histogram",
                                          "attention overlays"]
    for alt, image in images:
        assert image.width > 200 and image.height > 100, alt
        assert np.asarray(image.convert("L")).std() > 5, f"{alt} is blank"
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere
    for needle in ("test accuracy, Monte-Carlo", "deletion AUC, attention order", "0.95", "cluttered_digits_shifted",
                   "anchor perplexity"):
        assert needle in text


def test_report_renders_in_headless_chromium(report):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); the PNG twin test still checks the page")
    rendered = render_images(report[0], browser)
    assert len(rendered) == len(EXPECTED_PLOTS)
    for image in rendered:
        assert image["complete"] and image["width"] > 200 and image["height"] > 100 and image["shown"] > 0, image


def test_report_of_a_plain_run_leaves_out_what_does_not_apply(tmp_path):
    workdir = fake_run(tmp_path / "plain", quantized=False)
    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("curve_fractions", "deletion_curve"):
        summary.pop(key)
    (workdir / "summary.json").write_text(json.dumps(summary))
    result = write_run_report(workdir)
    assert result["plots"] == ["training_curves", "attention_overlays"]
    assert len(images_in_html((workdir / "report.html").read_text())) == 2


def test_report_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        write_run_report(tmp_path)


def test_read_metrics_skips_a_torn_line(tmp_path):
    records = read_metrics(fake_run(tmp_path / "r") / "metrics.jsonl")
    assert len(records) == 21 and records[-1]["kind"] == "eval"


def test_training_curves_panels_follow_the_records():
    records = [{"step": s, "kind": "train", "total": 1.0 / s, "accuracy": 0.5} for s in range(1, 5)]
    assert plots.training_curves(records).startswith(b"\x89PNG")
    assert plots.training_curves([{"step": 1, "kind": "eval", "accuracy_mc": "nan"}]) is None
    assert plots.deletion_insertion({}) is None and plots.anchor_histogram({"anchor_usage": []}) is None


def test_formatting():
    assert format_value(None) == "-" and format_value(3) == "3" and format_value(12000.0) == "12,000"
    assert format_value(0.123456) == "0.1235" and format_value("<b>") == "&lt;b&gt;"
    assert table_html(["a", "b"], [["x", 1.5]]) == (
        '<table><tr><th class="name">a</th><th>b</th></tr><tr><td class="name">x</td><td>1.5</td></tr></table>')


def test_tensorboard_gets_the_overlay_grid_as_an_image(tmp_path):
    from ib_attention_jax.evaluation.overlays import examples_grid
    from ib_attention_jax.training.metrics import MetricWriter

    rng = np.random.default_rng(0)
    examples = {"image": rng.standard_normal((3, 32, 32, 3)), "attention": rng.random((3, 16, 16)),
                "label": np.array([0, 1, 2]), "pred_mc": np.array([0, 1, 1])}
    writer = MetricWriter(tmp_path, tensorboard=True)
    writer.write_image(5, "eval/attention_overlays", examples_grid(examples, (0.5,) * 3, (0.5,) * 3))
    writer.write_image(5, "eval/nothing", None)  # a model without maps: no image
    writer.close()
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").iterdir())
    assert b"eval/attention_overlays" in events and b"\x89PNG" in events and b"eval/nothing" not in events
    off = MetricWriter(tmp_path / "off")
    off.write_image(5, "eval/attention_overlays", np.zeros((4, 4, 3), np.uint8))  # TensorBoard off: ignored
    off.close()
    assert not (tmp_path / "off" / "tensorboard").exists()
