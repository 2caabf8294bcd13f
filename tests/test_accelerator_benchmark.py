"""The accelerator benchmark: its time boxes, rows and worst errors, and one tiny run of the command on CPU."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from experiments.benchmarks import accelerator as acc
from experiments.benchmarks.parity_summary import MARKER, PLAN_MARKER, worst_of
from ib_attention_jax.interop.parity import Comparison, ParityReport
from ib_attention_jax.interop.train_parity import ClassReport
from ib_attention_jax.interop.train_records import ClassResult

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORWARD_FIXTURE = "tests/fixtures/official_parity/vgg_aib_cifar10_seed0.json"
SCHEDULE_FIXTURE = "tests/fixtures/official_train_step/official_lr_schedules.json"
TORCH_AVAILABLE = acc.importlib.util.find_spec("torch") is not None


# -- the parts the command is built from --------------------------------------------------------------
def test_budget_box_is_capped_and_leaves_the_later_parts_their_minimum():
    now = [0.0]
    budget = acc.Budget(100, clock=lambda: now[0])
    assert budget.box(30, 20) == 30
    now[0] = 70.0
    assert budget.left() == 30 and budget.box(30, 20) == 10 and budget.box(None, 0) == 30
    now[0] = 95.0
    assert budget.box(30, 20) < 0


def _child(**overrides):
    """A JSON line of train_step.py (the fields the accelerator reads)."""
    line = {"model": "vgg_aib", "dtype": "bfloat16", "batch": 128, "ratio": 2.0, "steps": 20, "repeats": 3,
            "warmup": 2, "device": "gpu: NVIDIA H200", "versions": {"jax": "0.11.2"},
            "jax_img_per_s": 2000.0, "jax_img_per_s_runs": [1990.0, 2000.0, 2010.0], "jax_gflops": 500000.0,
            "jax_step_gflop": 32000.0, "jax_peak_device_mb": 9000.0, "jax_peak_added_mb": 800.0,
            "jax_first_step_s": 0.5, "jax_losses": [3.2, 3.1], "compile_s": 30.0, "jax_init_s": 2.0,
            "jax_flops_source": "xla cost_analysis", "jax_matmul_precision": "default",
            "jax_direct_gflops": 480000.0, "jax_buffers_mb": {"temp_mb": 100.0},
            "torch_img_per_s": 1000.0, "torch_img_per_s_runs": [1000.0], "torch_gflops": 240000.0,
            "torch_step_gflop": 30720.0, "torch_peak_device_mb": 6000.0, "torch_peak_added_mb": 300.0,
            "torch_first_step_s": 1.0, "torch_losses": [3.2, 3.0],
            "torch_settings": {"device": "cuda", "channels_last": True, "autocast_bfloat16": True}}
    line.update(overrides)
    return line


def test_train_row_rates_both_frameworks_against_the_peak_and_takes_device_memory():
    row = acc.train_row(_child(), peak_tflops=1000.0)
    j, t = row["jax"], row["torch"]
    assert row["status"] == "ok" and row["ratio"] == 2.0 and row["batch"] == 128
    assert j["tflops"] == 500.0 and j["share_of_bf16_peak"] == 0.5 and j["step_tflop"] == 32.0
    assert t["tflops"] == 240.0 and t["share_of_bf16_peak"] == 0.24
    assert j["tflops_at_torch_count"] == 480.0 and j["compile_s"] == 30.0
    assert j["peak_memory_mb"] == 9000.0 and j["memory_source"] == "device: peak_bytes_in_use"
    assert t["peak_memory_mb"] == 6000.0 and t["memory_source"] == "device: torch.cuda.max_memory_allocated"
    assert t["settings"]["channels_last"] is True


def test_train_row_on_cpu_takes_the_rss_rise_and_no_share_without_a_peak():
    row = acc.train_row(_child(jax_peak_device_mb=None, torch_peak_device_mb=None), peak_tflops=None)
    assert row["jax"]["peak_memory_mb"] == 800.0 and row["jax"]["memory_source"].startswith("host: peak RSS")
    assert row["torch"]["peak_memory_mb"] == 300.0
    assert row["jax"]["share_of_bf16_peak"] is None and row["jax"]["tflops"] == 500.0
    no_torch = acc.train_row(_child(torch_img_per_s=None, ratio=None), peak_tflops=1000.0)
    assert no_torch["torch"] is None and no_torch["jax"]["img_per_s"] == 2000.0


def test_worst_of_a_forward_report_is_the_output_nearest_its_tolerance():
    report = ParityReport("f.json", "vgg_aib", [
        Comparison("logits", 1e-6, 1e-6, 2e-5, True), Comparison("kl_official", 3e-5, 1.5e-5, 1e-5, False),
        Comparison("att_q_index", 2.0, 0.0, 0.0, True, "2 differ, 0 away from a boundary")])
    worst = worst_of(report)
    assert worst["compared"] == 3 and worst["failing"] == ["kl_official"]
    assert worst["worst"]["output"] == "kl_official" and worst["worst"]["error_over_tolerance"] == pytest.approx(1.5)


def test_worst_of_a_class_report_skips_classes_without_a_bound():
    report = ClassReport("t.json", "model vgg_aib", [
        ClassResult("s0_loss", 4, 2e-6, "step0/class_loss", 1e-6, 1e-5, None),
        ClassResult("s1_grad", 55, 17.9, "step1/grad", 0.5, None, None)])
    worst = worst_of(report)
    assert worst["failing"] == [] and worst["worst"]["output"] == "s0_loss: step0/class_loss"
    assert worst["worst"]["error_over_tolerance"] == pytest.approx(0.2)
    assert worst_of(ClassReport("t.json", "empty", []))["worst"] is None


def test_fixtures_are_found_cheapest_first_and_tiny_takes_one_of_each_kind():
    fixtures = acc.find_fixtures(list(acc.PARITY_GLOBS))
    assert FORWARD_FIXTURE in fixtures and SCHEDULE_FIXTURE in fixtures
    cub = [i for i, f in enumerate(fixtures) if "cub" in pathlib.Path(f).name]
    assert cub and min(cub) > max(i for i, f in enumerate(fixtures) if "cub" not in pathlib.Path(f).name)
    tiny = acc.tiny_fixtures(fixtures)
    folders = [pathlib.Path(f).parent.name for f in tiny]
    assert set(folders) == {"official_parity", "baselines_parity", "official_train_step"}
    assert SCHEDULE_FIXTURE in tiny and not any("cub" in f for f in tiny) and len(tiny) == 4


def test_a_child_past_its_time_box_is_stopped_and_its_output_kept():
    child = acc.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                          box_s=2, echo=False)
    assert child.timed_out and child.returncode is None
    assert "started" in child.output and child.seconds < 30


def test_parity_rows_keep_finished_fixtures_and_say_why_the_rest_were_not_reached():
    done = {"fixture": "a.json", "passed": True, "worst": None}
    output = "\n".join(["noise", PLAN_MARKER + json.dumps(["a.json", "b.json"]), MARKER + json.dumps(done)])
    stopped = acc.ChildResult(None, 5.0, output)
    rows = acc.parity_rows(output, ["ignored.json"], stopped, box_s=5)
    assert rows[0] == done
    assert rows[1]["fixture"] == "b.json" and rows[1]["passed"] is None and "time box of 5 s" in rows[1]["skipped"]
    crashed = acc.parity_rows(output, [], acc.ChildResult(-11, 1.0, output), box_s=5)
    assert "exited with status -11" in crashed[1]["skipped"]


def test_last_json_line_is_the_last_object_printed():
    assert acc.last_json_line('{"a": 1}\ntext\n{"b": 2}\n{broken\n') == {"b": 2}
    assert acc.last_json_line("no json here") is None


# -- the command, tiny, on this machine ---------------------------------------------------------------
def _run(out: pathlib.Path, *args: str, timeout: int = 400) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "experiments.benchmarks.accelerator", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run without --tiny (a CPU makes it tiny): vgg_aib in both dtypes, the quickstart, two fixtures."""
    out = tmp_path_factory.mktemp("accelerator") / "result.json"
    return _run(out, "--models", "vgg_aib", "--peak-tflops", "1", "--parts", "train_step,quickstart,parity",
                "--parity-fixtures", FORWARD_FIXTURE, SCHEDULE_FIXTURE)


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_the_tiny_run_writes_every_section_with_sane_values(tiny_run):
    result, stdout = tiny_run
    assert result["complete"] is True and result["tiny"] is True and result["device"]["platform"] == "cpu"
    assert result["peak"] == {"tflops": 1.0, "dtype": "bfloat16", "dense": True, "source": "--peak-tflops"}
    assert 0 < result["wall_s"] <= result["time_budget_s"] and result["sizes"]["batch"] == 2

    rows = result["train_step"]["rows"]
    assert [(r["model"], r["dtype"], r["status"]) for r in rows] == [("vgg_aib", "float32", "ok"),
                                                                     ("vgg_aib", "bfloat16", "ok")]
    for row in rows:
        j = row["jax"]
        assert row["batch"] == 2 and _positive(row["wall_s"])
        assert _positive(j["img_per_s"]) and _positive(j["tflops"]) and _positive(j["step_tflop"])
        assert j["share_of_bf16_peak"] == pytest.approx(j["tflops"], rel=1e-3)  # the peak is 1 TFLOP/s
        assert _positive(j["peak_memory_mb"]) and j["memory_source"].startswith("host")  # CPU: no device stats
        assert _positive(j["compile_s"]) and all(math.isfinite(v) for v in j["losses"])
        if TORCH_AVAILABLE:
            assert _positive(row["torch"]["img_per_s"])
        else:
            assert "skipped" in row["torch"]
    assert _positive(result["train_step"]["wall_s"])

    q = result["quickstart"]
    assert q["status"] == "ok" and q["model"] == "small_aib" and q["dataset"] == "cluttered_digits"
    assert q["batch"] == 8 and all(_positive(q[k]) for k in ("loop_img_per_s", "step_img_per_s",
                                                               "pipeline_img_per_s", "compile_s", "wall_s"))

    p = result["parity"]
    assert p["status"] == "ok" and p["matmul_precision"] == "highest" and p["precision"] == "float32"
    assert (p["passed"], p["failed"], p["not_reached"]) == (2, 0, 0) and _positive(p["wall_s"])
    assert [r["fixture"] for r in p["fixtures"]] == [FORWARD_FIXTURE, SCHEDULE_FIXTURE]
    for row in p["fixtures"]:
        assert row["passed"] is True and 0 <= row["worst"]["error_over_tolerance"] < 1 and row["compared"] > 0
    assert result["parity_float64"] == {"status": "skipped", "reason": "not in --parts"}
    assert "quickstart (small_aib, batch 8)" in stdout and "parity (float32 records" in stdout


def test_the_tiny_run_times_pytorch_on_the_same_batch(tiny_run):
    pytest.importorskip("torch", reason="the PyTorch side of the train-step rows needs torch")
    rows = tiny_run[0]["train_step"]["rows"]
    for row in rows:
        j, t = row["jax"], row["torch"]
        assert _positive(t["img_per_s"]) and _positive(t["tflops"]) and _positive(t["peak_memory_mb"])
        assert row["ratio"] == pytest.approx(j["img_per_s"] / t["img_per_s"], rel=0.02)
        assert t["settings"]["autocast_bfloat16"] is (row["dtype"] == "bfloat16")
        assert t["settings"]["channels_last"] is (row["dtype"] == "bfloat16")
        assert 0.3 < j["step_tflop"] / t["step_tflop"] < 3  # one model (Winograd on CPU executes about half)


def test_a_budget_too_small_skips_every_part_with_its_reason(tmp_path):
    result, _ = _run(tmp_path / "result.json", "--models", "vgg_aib", "--dtypes", "float32", "--time-budget", "5",
                     "--parity-fixtures", SCHEDULE_FIXTURE, timeout=120)
    assert result["complete"] is True
    (row,) = result["train_step"]["rows"]
    assert row["status"] == "skipped" and "time budget" in row["reason"]
    for part in ("quickstart", "parity", "parity_float64"):
        assert result[part]["status"] == "skipped" and "time budget" in result[part]["reason"], part
