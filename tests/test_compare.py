"""Seeded comparisons on the tiny `smoke` preset (two variants, one seed, six steps): rows, resume, skip, page."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from html_check import chromium, images_in_html, render_images

from ib_attention_jax import data
from ib_attention_jax.modes.compare import PRESETS, ROW_KEYS, parse_overrides, run_comparison, run_config
from ib_attention_jax.training.loop import KILL_AFTER_STEP_ENV

REPO = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "tfds_data"
    data.build_cluttered_digits(str(path))
    return str(path)


def compare_cli(root, data_dir, *extra, env=None, timeout=600):
    cmd = [sys.executable, "-m", "experiments.compare", "--preset=smoke", "--seeds=0", f"--workdir={root}",
           f"--data_dir={data_dir}", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def train_steps(workdir: pathlib.Path) -> list[int]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x["step"] for x in lines if x["kind"] == "train"]


def outputs(root: pathlib.Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob("*/seed_*/*.json"))
            if p.name in ("summary.json", "probe.json")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, data_dir):
    """The smoke comparison killed in its first run, resumed, then run a third time (nothing left to do)."""
    root = tmp_path_factory.mktemp("compare")
    killed = compare_cli(root, data_dir, env={KILL_AFTER_STEP_ENV: "3"})  # SIGKILL after the step-3 checkpoint
    first = root / "aib" / "seed_0"
    state = {"killed": killed, "steps_before": train_steps(first),
             "had_summary": (first / "summary.json").exists(), "checkpoints": sorted(os.listdir(first / "checkpoints"))}
    logs: list[str] = []
    state["result"] = run_comparison(PRESETS["smoke"], [0], root, data_dir, log=logs.append)
    state["logs"], state["stamps"] = logs, outputs(root)
    again: list[str] = []
    state["again"] = run_comparison(PRESETS["smoke"], [0], root, data_dir, log=again.append)
    state["logs_again"], state["stamps_again"] = again, outputs(root)
    return root, state


def test_an_interrupted_run_resumes_from_its_checkpoint(compared):
    root, state = compared
    assert state["killed"].returncode == -9, state["killed"].stderr[-3000:]
    assert not state["had_summary"] and "3" in state["checkpoints"]
    steps = train_steps(root / "aib" / "seed_0")
    before = state["steps_before"]
    assert before and max(before) <= 3
    resumed = steps[len(before):]
    assert resumed and min(resumed) > 3  # continued after the checkpoint, not from step 1
    assert len(set(steps)) == len(steps)
    summary = json.loads((root / "aib" / "seed_0" / "summary.json").read_text())
    assert summary["steps"] == 6


def test_comparison_rows_hold_every_key_and_null_where_a_metric_does_not_apply(compared):
    root, _ = compared
    document = json.loads((root / "comparison.json").read_text())
    rows = {r["variant"]: r for r in document["rows"]}
    assert len(document["rows"]) == 2 and set(rows) == {"aib", "plain"}
    for row in rows.values():
        assert set(ROW_KEYS) <= set(row)
        assert row["seed"] == 0 and 0 <= row["test_accuracy_mc"] <= 1 and 0 <= row["test_accuracy_mean"] <= 1
        assert 0 <= row["probe_accuracy"] <= 1 and row["probe_dataset"] == "cluttered_digits_shifted"
    aib, plain = rows["aib"], rows["plain"]
    for key in ("pointing_game", "energy_in_box", "box_area_fraction", "deletion_auc", "deletion_auc_random",
                "insertion_auc", "insertion_auc_random"):
        assert 0 <= aib[key] <= 1, key
        assert plain[key] is None, key
    assert aib["anchors_used"] is None and plain["anchors_used"] is None  # no quantiser in either
    assert aib["probe_accuracy_latent"] is not None and plain["probe_accuracy_latent"] is None
    assert document["mean_std"]["aib"]["test_accuracy_mc"]["n"] == 1
    md = (root / "comparison.md").read_text()
    assert "| aib | 1 |" in md and "| plain | 1 |" in md and "±" in md


def test_the_same_command_again_skips_finished_runs(compared):
    _, state = compared
    assert any("training" in line for line in state["logs"])
    assert all("training" not in line and "linear probe" not in line for line in state["logs_again"])
    assert sum("finished earlier" in line for line in state["logs_again"]) == 2
    assert state["stamps_again"] == state["stamps"] and len(state["stamps"]) == 4  # summary + probe per run
    assert state["again"]["rows"] == 2


def test_comparison_page_and_plots(compared):
    root, state = compared
    assert set(state["result"]["plots"]) == {"comparison_metrics.png", "deletion_insertion.png"}
    for name in state["result"]["plots"]:
        assert (root / name).read_bytes().startswith(b"\x89PNG")
    images = images_in_html((root / "report.html").read_text())
    assert [alt for alt, _ in images] == ["comparison_metrics.png", "deletion_insertion.png"]
    assert all(image.width > 300 for _, image in images)


def test_comparison_page_renders_in_headless_chromium(compared):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); the PNG twin test still checks the page")
    rendered = render_images(compared[0] / "report.html", browser)
    assert len(rendered) == 2 and all(i["complete"] and i["width"] > 300 and i["shown"] > 0 for i in rendered)


def test_presets_and_overrides():
    assert {"cluttered_digits", "cluttered_digits_ablation", "cifar10_vgg", "cifar10_wrn", "smoke"} <= set(PRESETS)
    quick = {v.name: run_config(v, 2, "/data", {}) for v in PRESETS["cluttered_digits"].variants}
    assert list(quick) == ["aib", "aib_qt", "plain", "aib_beta0"]
    assert [c.model for c in quick.values()] == ["small_aib", "small_aib_qt", "small_plain", "small_aib"]
    assert quick["aib_beta0"].objective.beta == 0.0 and quick["aib"].objective.beta == 1e-2
    assert all(c.seed == 2 and c.data_dir == "/data" and c.num_epochs == 4 for c in quick.values())
    ablation = PRESETS["cluttered_digits_ablation"].variants
    assert sorted(v.value for v in ablation if v.group == "beta") == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    anchors = {v.name: run_config(v, 0, None, {}) for v in ablation if v.group == "anchors"}
    assert [c.model_kwargs.num_anchors for c in anchors.values()] == [2, 4, 8, 12, 20]
    baselines = {v.name: run_config(v, 0, None, {}).model for v in PRESETS["cluttered_digits_baselines"].variants}
    assert baselines == {"aib": "small_aib", "aib_qt": "small_aib_qt", "ltpa": "small_ltpa", "abn": "small_abn",
                         "plain": "small_plain"}
    vgg = {v.name: run_config(v, 0, None, {}).model for v in PRESETS["cifar10_vgg"].variants}
    assert vgg == {"aib": "vgg_aib", "plain": "vgg_plain", "aib_qt": "vgg_aib_qt"}
    wrn = {v.name: run_config(v, 0, None, {}).model for v in PRESETS["cifar10_wrn"].variants}
    assert wrn == {"aib": "wrn_aib", "plain": "wrn_plain", "aib_qt": "wrn_aib_qt"}
    assert parse_overrides(["num_epochs=2", "objective.beta=0.1", "eval_split=test[:10]"]) == {
        "num_epochs": 2, "objective.beta": 0.1, "eval_split": "test[:10]"}
    with pytest.raises(KeyError, match="no_such_key"):
        run_config(PRESETS["smoke"].variants[0], 0, None, {"no_such_key": 1})


def test_cli_rejects_bad_requests_before_training(tmp_path):
    bad = compare_cli(tmp_path, str(tmp_path), "--override=no_such_key=1", timeout=120)
    assert bad.returncode == 2 and "no_such_key" in bad.stderr
    unknown = compare_cli(tmp_path, str(tmp_path), "--variants=aib,nope", timeout=120)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    assert not list(tmp_path.iterdir())  # nothing was started


def main_cli(workdir, *extra, timeout=300):
    cmd = [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_linear_probe_and_report_modes_on_a_trained_run(compared, tmp_path):
    import shutil

    run = tmp_path / "aib"
    shutil.copytree(compared[0] / "aib" / "seed_0", run)
    (run / "probe.json").unlink()
    (run / "report.html").unlink(missing_ok=True)
    probe = main_cli(run, "--mode=linear_probe", "--config.probe.max_train_examples=120",
                     "--config.probe.max_test_examples=60", "--config.probe.classifier=linear_svm")
    assert probe.returncode == 0, probe.stderr[-3000:]
    written = json.loads((run / "probe.json").read_text())
    assert written["splits"] == {"train": "train[:120]", "test": "test[:60]"} and written["classifier"] == "linear_svm"
    assert set(written["features"]) == {"latent_mean", "pooled_features"}
    assert written["features"]["latent_mean"]["num_features"] == 64  # small_aib's K
    assert written["features"]["pooled_features"]["num_test"] == 60
    report = main_cli(run, "--mode=report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads(report.stdout[report.stdout.index("{"):])["plots"] == [
        "training_curves", "deletion_insertion", "attention_overlays"]
    images = images_in_html((run / "report.html").read_text())
    assert len(images) == 3
    empty = main_cli(tmp_path / "nothing", "--mode=report", "--config=experiments/configs/quickstart.py")
    assert empty.returncode == 1 and "error:" in empty.stderr and "Traceback" not in empty.stderr
