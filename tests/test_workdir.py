"""A workdir belongs to one run: the recorded config, the refusal of another run's config, the lock, writability."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.errors import ConfigError
from ib_attention_jax.training import workdir as workdir_lib
from ib_attention_jax.training.workdir import (
    CONFIG_FILE,
    LOCK_FILE,
    ConfigMismatchError,
    WorkdirError,
    WorkdirLock,
    WorkdirLockedError,
    open_run,
)


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_first_start_records_the_resolved_config_and_a_restart_reports_changes(tmp_path):
    with open_run(quickstart(), tmp_path, train=True) as run:
        assert not run.recorded and not (tmp_path / CONFIG_FILE).exists()  # written once restored
        assert (tmp_path / LOCK_FILE).exists()
        run.record()
    assert not (tmp_path / LOCK_FILE).exists()
    stored = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert stored["config"]["num_classes"] == 10 and stored["config"]["model_kwargs"]["latent_dim"] == 64
    assert stored["run_id"] == run.run_id

    c = quickstart()
    c.optimizer.learning_rate = 3e-3
    with open_run(c, tmp_path, train=True) as again:
        assert again.run_id == run.run_id and again.recorded
        assert [ch.describe() for ch in again.changes] == ["optimizer.learning_rate: 0.0015 -> 0.003"]
        assert "optimizer.learning_rate: 0.0015 -> 0.003" in again.describe_changes()
        assert again.change_record() == {"optimizer.learning_rate": {"old": 1.5e-3, "new": 3e-3}}


def test_a_config_of_another_run_is_refused_before_anything_is_touched(tmp_path):
    with open_run(quickstart(), tmp_path, train=True) as run:
        run.record()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "marker").write_text("x")
    before = _tree(tmp_path)
    other = quickstart("small_aib_qt")
    other.seed = 4
    with pytest.raises(ConfigMismatchError) as err:
        with open_run(other, tmp_path, train=True):
            pass
    message = str(err.value)
    assert "model: 'small_aib' -> 'small_aib_qt'" in message and "seed: 0 -> 4" in message
    assert "--workdir=NEW_DIR" in message and "Nothing was changed" in message
    with pytest.raises(ConfigMismatchError, match="Leave out --config"):
        with open_run(other, tmp_path, train=False):
            pass
    assert _tree(tmp_path) == before


def test_an_invalid_config_is_refused_before_the_workdir_is_created(tmp_path):
    c = quickstart()
    c.batch_size = 0
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        with open_run(c, tmp_path / "new", train=True):
            pass
    assert not (tmp_path / "new").exists()


def test_evaluation_needs_an_existing_writable_workdir_and_says_so_at_once(tmp_path, monkeypatch):
    with pytest.raises(WorkdirError, match="does not exist; train first"):
        with open_run(quickstart(), tmp_path / "missing", train=False):
            pass
    real_open = os.open

    def read_only(path, flags, *args):
        if os.fspath(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(workdir_lib.os, "open", read_only)
    with pytest.raises(WorkdirError, match=r"cannot write to the workdir .*Read-only file system"):
        with open_run(quickstart(), tmp_path, train=False):
            pass


def test_evaluation_checks_the_workdir_before_any_work(tmp_path, monkeypatch):
    from ib_attention_jax.modes import restore
    from ib_attention_jax.modes.evaluate import evaluate_checkpoint
    from ib_attention_jax.modes.export_attention import export_attention

    with open_run(quickstart(), tmp_path, train=True) as run:
        run.record()

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started working on a workdir it cannot write")

    monkeypatch.setattr(restore, "build_experiment", no_work)
    monkeypatch.setattr(restore, "ensure_embedded", no_work)
    real_open = os.open

    def no_permission(path, flags, *args):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(workdir_lib.os, "open", no_permission)
    with pytest.raises(WorkdirError, match="cannot write to the workdir"):
        evaluate_checkpoint(quickstart(), str(tmp_path))
    with pytest.raises(WorkdirError, match="cannot write to the workdir"):
        export_attention(quickstart(), str(tmp_path))


def test_a_second_run_on_a_locked_workdir_is_refused_with_who_holds_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(),
                                                      "start": workdir_lib._process_start(child.pid),
                                                      "since": "2026-01-01 00:00:00", "token": "x"}))
        with pytest.raises(WorkdirLockedError, match=f"process {child.pid} on {socket.gethostname()}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    lock = WorkdirLock(tmp_path).acquire()  # its process is gone now: a stale lock, taken over
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(WorkdirLockedError, match="process 1 on elsewhere"):
        WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "start": "1", "since": "then"}))  # alive, but started at tick 1
    if workdir_lib._process_start(os.getppid()) is None:
        pytest.skip("needs /proc to tell a reused pid apart")
    WorkdirLock(tmp_path).acquire().release()


def test_a_damaged_config_json_is_an_error_naming_it(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(WorkdirError, match=f"{CONFIG_FILE} is not a config this library wrote"):
        with open_run(quickstart(), tmp_path, train=True):
            pass
