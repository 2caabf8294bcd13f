"""The training loop end to end on the embedded dataset: outputs, modes, resume, SIGTERM, Ctrl-C, NaN guard."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ib_attention_jax import data
from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.modes.evaluate import evaluate_checkpoint
from ib_attention_jax.modes.export_attention import export_attention
from ib_attention_jax.modes.train import train as train_mode
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import KILL_AFTER_STEP_ENV, NonFiniteLossError, build_experiment

REPO = pathlib.Path(__file__).parent.parent
# Deletion/insertion scoring (about 60 forward passes per 32 test examples) is off in these runs: it took 16 s
# of a 23 s six-step run on 2 CPU cores. test_train_evaluate_and_export_write_their_outputs runs it, at 4 steps.
SMALL = ["--config.batch_size=16", "--config.eval_batch_size=32", "--config.train_split=train[:512]",
         "--config.eval_split=test[:64]", "--config.eval_num_samples=2", "--config.progress=False",
         "--config.attention_metrics_examples=0"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "tfds_data"
    data.build_cluttered_digits(str(path))
    return str(path)


def small_config(data_dir: str, **overrides):
    c = quickstart()
    c.update(dict(data_dir=data_dir, batch_size=16, eval_batch_size=32, train_split="train[:512]",
                  eval_split="test[:64]", eval_num_samples=2, progress=False, num_steps=4, log_every_steps=1,
                  export_examples=8, attention_metrics_examples=0))
    c.update(overrides)
    return c


def run_cli(workdir, data_dir, *extra, env=None, timeout=300):
    cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/quickstart.py",
           f"--workdir={workdir}", f"--config.data_dir={data_dir}", *SMALL, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def final_params(workdir, data_dir, step: int):
    config = small_config(data_dir)
    state, _, restored_step = Checkpointer(pathlib.Path(workdir) / "checkpoints").restore(
        build_experiment(config).state, step=step)
    assert restored_step == step
    return state


def test_train_evaluate_and_export_write_their_outputs(tmp_path, data_dir):
    config = small_config(data_dir, model="small_aib_qt", attention_metrics_examples=32, attention_metrics_steps=4)
    summary = train_mode(config, str(tmp_path))
    for key in ("test_accuracy_mc", "test_accuracy_mean", "pointing_game", "energy_in_box", "wall_seconds"):
        assert key in summary
    assert summary["attention_metrics_examples"] == 32 and summary["curve_fractions"] == [0, 0.25, 0.5, 0.75, 1]
    for key in ("deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random"):
        assert 0 <= summary[key] <= 1, (key, summary[key])
    assert summary["num_eval_examples"] == 64
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["steps"] == 4 and 0 <= saved["pointing_game"] <= 1
    assert (tmp_path / "attention_overlays.png").stat().st_size > 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert {"ce", "kl", "vq_loss", "commit_loss", "anchor_perplexity", "anchor_usage", "images_per_second"} <= set(
        train[-1])
    assert [x for x in lines if x["kind"] == "eval"]
    evaluated = evaluate_checkpoint(small_config(data_dir, model="small_aib_qt"), str(tmp_path))
    assert evaluated["step"] == 4
    assert evaluated["accuracy_mc"] == pytest.approx(summary["test_accuracy_mc"])
    exported = export_attention(small_config(data_dir, model="small_aib_qt"), str(tmp_path), 5)
    names = sorted(p.name for p in (tmp_path / "attention_maps").iterdir())
    assert exported["files"] == 15 and "test_0000_att00_q.png" in names and "grid.png" in names


def test_validation_split_selects_and_keeps_the_best_state_with_its_score(tmp_path, data_dir):
    config = small_config(data_dir, validation_split="train[512:576]", eval_every_steps=2)
    summary = train_mode(config, str(tmp_path))
    assert summary["validation_split"] == "train[512:576]"
    assert summary["selected_step"] in (2, 4)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validation = {x["step"]: x["accuracy_mc"] for x in lines if x["kind"] == "validation"}
    assert sorted(validation) == [2, 4]
    best_score = max(validation.values())
    assert summary["validation_accuracy_mc"] == pytest.approx(best_score)
    assert validation[summary["selected_step"]] == pytest.approx(best_score)
    from ib_attention_jax.training.selection import BestCheckpoint

    kept = BestCheckpoint(tmp_path / "best_on_validation", "accuracy_mc")
    assert (kept.step, kept.score) == (summary["selected_step"], pytest.approx(best_score))


def test_killed_run_resumes_on_the_same_trajectory(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    common = ["--config.num_steps=6", "--config.checkpoint_every_steps=1"]
    assert run_cli(straight, data_dir, *common).returncode == 0
    proc = run_cli(killed, data_dir, *common, env={KILL_AFTER_STEP_ENV: "3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert max(Checkpointer(killed / "checkpoints").all_steps()) == 3
    resumed = run_cli(killed, data_dir, *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    train_steps = [x["step"] for x in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
                   if x["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)), train_steps  # no step logged twice after the resume
    a, b = final_params(straight, data_dir, 6), final_params(killed, data_dir, 6)
    import jax

    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                   (a.params, a.batch_stats, a.opt_state), (b.params, b.batch_stats, b.opt_state))
    assert max(jax.tree_util.tree_leaves(diffs)) == 0.0


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, data_dir):
    cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/quickstart.py",
           f"--workdir={tmp_path}", f"--config.data_dir={data_dir}", *SMALL, "--config.num_steps=100000",
           "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = Checkpointer(tmp_path / "checkpoints").all_steps()
    assert steps and 2 <= steps[-1] < 100000
    assert '"preempted"' in metrics.read_text()


def test_ctrl_c_saves_a_checkpoint_at_the_step_it_stopped_and_a_second_run_is_locked_out(tmp_path, data_dir):
    cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/quickstart.py",
           f"--workdir={tmp_path}", f"--config.data_dir={data_dir}", *SMALL, "--config.num_steps=100000",
           "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.5)
    second = run_cli(tmp_path, data_dir, "--config.num_steps=100000")  # the same run, started again meanwhile
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"another run is using this workdir: process {proc.pid}" in second.stderr
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Ctrl-C: saving a checkpoint" in err and "SIGINT: saved the checkpoint of step" in err
    (stopped,) = [json.loads(x) for x in metrics.read_text().splitlines() if '"preempted"' in x]
    assert stopped["signal"] == "SIGINT" and stopped["step"] >= 2
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [stopped["step"]]
    assert not (tmp_path / "run.lock").exists()


def test_the_first_ctrl_c_asks_for_a_save_and_the_second_aborts():
    from ib_attention_jax.training.loop import _StopFlag

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    with _StopFlag() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        stop._handle(signal.SIGINT, None)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before is back
    with _StopFlag() as stop:
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)  # SIGTERM twice still saves
        assert stop.signal_name == "SIGTERM"


def test_non_finite_loss_stops_with_step_parts_and_checkpoint(tmp_path, data_dir):
    config = small_config(data_dir, num_steps=8, checkpoint_every_steps=1)
    config.optimizer.update(name="sgd", learning_rate=1e30, schedule="constant")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: parts .*'ce'.*last good checkpoint"):
        train_mode(config, str(tmp_path))
