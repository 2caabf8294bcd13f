"""Runs and workdirs through the command line, as a user runs them (the CLI in a subprocess).

A restart with another model touches nothing; one with another learning rate continues and says so;
typos and bad values are short errors; the default data folder; a second concurrent run; a full disk;
a read-only workdir; checkpoints of another run.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from ib_attention_jax import data
from ib_attention_jax.training.checkpoint import Checkpointer

REPO = pathlib.Path(__file__).parent.parent
QUICKSTART = "--config=experiments/configs/quickstart.py"
SMALL = ["--config.batch_size=16", "--config.eval_batch_size=32", "--config.train_split=train[:512]",
         "--config.eval_split=test[:64]", "--config.eval_num_samples=2", "--config.progress=False",
         "--config.export_examples=4", "--config.attention_metrics_examples=0"]  # scored in test_training_loop
OPTIONS = ["--config.model_kwargs.latent_dim=32", "--config.model_kwargs.conv_impl=xla"]  # typed from the builder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "tfds_data"
    data.build_cluttered_digits(str(path))
    return str(path)


def cli(workdir, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def tree_hashes(path: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_short_error(proc: subprocess.CompletedProcess, *texts: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 8, proc.stderr
    for text in texts:
        assert text in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> pathlib.Path:
    """A workdir trained 3 steps with --config.model_kwargs options; tests work on copies."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    proc = cli(workdir, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, *OPTIONS, "--config.num_steps=3",
               "--config.log_every_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture
def copy_of(trained, tmp_path) -> pathlib.Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_the_workdir_records_the_resolved_config(trained):
    stored = json.loads((trained / "config.json").read_text())
    assert stored["config"]["model_kwargs"] == {"anchor_init": "linspace", "conv_impl": "xla", "image_size": 32,
                                                "latent_dim": 32, "num_anchors": 0}
    assert stored["config"]["num_classes"] == 10 and stored["config"]["num_steps"] == 3
    assert not (trained / "run.lock").exists()


def test_a_restart_with_another_model_exits_non_zero_and_leaves_every_file_byte_identical(copy_of, data_dir):
    before = tree_hashes(copy_of)
    assert any(k.startswith("checkpoints/3/") for k in before)
    proc = cli(copy_of, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, *OPTIONS, "--config.num_steps=6",
               "--config.model=small_aib_qt")
    assert_short_error(proc, "model: 'small_aib' -> 'small_aib_qt'", "model_kwargs.num_anchors: 0 -> 8",
                       "--workdir=NEW_DIR", "Nothing was changed")
    # the model options are part of the run too: leaving out latent_dim=32 is another model
    proc = cli(copy_of, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, "--config.num_steps=6")
    assert_short_error(proc, "model_kwargs.latent_dim: 32 -> 64")
    # an evaluation cannot pick the wrong model either
    proc = cli(copy_of, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, "--mode=evaluate",
               "--config.model=small_aib_qt")
    assert_short_error(proc, "model: 'small_aib' -> 'small_aib_qt'", "Leave out --config")
    assert tree_hashes(copy_of) == before


def test_a_restart_with_another_learning_rate_continues_and_reports_the_change(copy_of, data_dir):
    proc = cli(copy_of, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, *OPTIONS, "--config.num_steps=5",
               "--config.log_every_steps=1", "--config.optimizer.learning_rate=0.003")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "optimizer.learning_rate: 0.0015 -> 0.003" in proc.stdout and "num_steps: 3 -> 5" in proc.stdout
    metrics = rows(copy_of)
    (change,) = [r for r in metrics if r["kind"] == "config_change"]
    assert change["step"] == 3
    assert change["changes"]["optimizer.learning_rate"] == {"old": 0.0015, "new": 0.003}
    train_steps = [r["step"] for r in metrics if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 4  # continued from 3, no repeats
    (step4,) = [r for r in metrics if r["kind"] == "train" and r["step"] == 4]
    assert step4["learning_rate"] == pytest.approx(0.003 * 3 / 100, rel=1e-4)  # the new rate, 3 warm-up steps in
    assert Checkpointer(copy_of / "checkpoints").all_steps() == [3, 5]
    assert json.loads((copy_of / "summary.json").read_text())["steps"] == 5
    assert json.loads((copy_of / "config.json").read_text())["config"]["optimizer"]["learning_rate"] == 0.003


def test_evaluate_uses_the_workdirs_own_config_without_config(copy_of):
    proc = cli(copy_of, "--mode=evaluate", "--config.eval_batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval_batch_size: 32 -> 16" in proc.stdout
    assert json.loads((copy_of / "eval.json").read_text())["step"] == 3


def test_a_misspelt_key_in_a_config_file_exits_non_zero_naming_it(tmp_path, data_dir):
    config = tmp_path / "typo.py"
    config.write_text("from ib_attention_jax.configs.quickstart import quickstart\n\n\ndef get_config():\n"
                      "    c = quickstart()\n    c.batch_sise = 16\n    return c\n")
    proc = cli(tmp_path / "run", f"--config={config}", f"--config.data_dir={data_dir}")
    assert_short_error(proc, "unknown config key 'batch_sise'", "did you mean batch_size")
    assert not (tmp_path / "run").exists()


def test_a_misspelt_key_on_the_command_line_is_a_short_error(tmp_path, data_dir):
    proc = cli(tmp_path / "run", QUICKSTART, f"--config.data_dir={data_dir}", "--config.optimizer.lerning_rate=0.1")
    assert_short_error(proc, "unknown config key 'optimizer.lerning_rate'", "optimizer.learning_rate")
    assert not (tmp_path / "run").exists()


def test_bad_values_are_all_named_before_anything_runs(tmp_path, data_dir):
    proc = cli(tmp_path / "run", QUICKSTART, f"--config.data_dir={data_dir}", "--config.batch_size=0",
               "--config.num_steps=-5", "--config.num_classes=5", "--config.optimizer.name=adamw")
    assert_short_error(proc, "batch_size must be >= 1, got 0", "num_steps must be >= 0, got -5",
                       "num_classes=5 but cluttered_digits has labels 0..9", "optimizer.name='adamw'")
    assert not (tmp_path / "run").exists()


def test_without_data_dir_the_embedded_dataset_is_built_in_tfds_data_dir(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    proc = cli(tmp_path / "run", QUICKSTART, *SMALL, *OPTIONS, "--config.num_steps=2",
               env={"TFDS_DATA_DIR": str(empty), "HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"building cluttered_digits in {empty}" in proc.stdout
    assert (empty / "cluttered_digits").is_dir() and not (tmp_path / "home").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


def test_checkpoints_of_another_run_stop_the_run_with_each_reason(copy_of, data_dir):
    (copy_of / "config.json").unlink()  # a workdir from before config.json, or one whose record was lost
    before = tree_hashes(copy_of)
    proc = cli(copy_of, QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, "--config.model=small_aib_qt",
               "--config.model_kwargs.conv_impl=xla", "--config.num_steps=4")
    assert_short_error(proc, "1 checkpoint(s) in", f"{copy_of / 'checkpoints' / '3'}: written by another run",
                       "new workdir")
    assert tree_hashes(copy_of) == before  # no config.json recorded, nothing pruned, no step 0


def _mount_tmpfs(path: pathlib.Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_full_disk_during_a_save_is_one_readable_error(tmp_path, data_dir):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "512k"):  # the in-process twin: test_checkpoint_safety.py (monkeypatched ENOSPC)
        pytest.skip("mounting a 1 MiB tmpfs needs root")
    try:
        proc = cli(disk / "run", QUICKSTART, f"--config.data_dir={data_dir}", *SMALL, *OPTIONS,
                   "--config.num_steps=2")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert_short_error(proc, "could not save the checkpoint of step 2", "no space left on device", "free there")
    assert "Event loop is closed" not in proc.stderr and proc.stderr.count("error:") == 1


def test_evaluation_of_a_read_only_workdir_fails_at_once(copy_of, tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: mount a read-only copy instead
        ro = tmp_path / "ro"
        if not _mount_tmpfs(ro, "64m"):
            pytest.skip("needs a read-only mount (root) or a non-root user")
        shutil.copytree(copy_of, ro / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        workdir = ro / "run"
    else:
        for p in [copy_of, *copy_of.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        workdir = copy_of
    try:
        t0 = time.time()
        proc = cli(workdir, "--mode=evaluate")
        elapsed = time.time() - t0
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(tmp_path / "ro")], check=False)
        else:
            for p in [copy_of, *copy_of.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    assert_short_error(proc, f"cannot write to the workdir {workdir}")
    assert "accuracy" not in proc.stdout and elapsed < 60
