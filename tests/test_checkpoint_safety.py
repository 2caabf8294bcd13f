"""Checkpoints never lose work: no silent restart, only this run's are pruned, one error for a full disk."""

import asyncio
import errno
import gc
import json
import logging
import math

import numpy as np
import pytest

from ib_attention_jax.training import checkpoint as checkpoint_lib
from ib_attention_jax.training.checkpoint import Checkpointer, CheckpointSaveError, UnrestorableCheckpointsError
from ib_attention_jax.training.metrics import drop_rows_after
from ib_attention_jax.training.selection import BestCheckpoint


def _state(value: float, size: int = 3) -> dict:
    return {"w": np.full((size,), value, np.float32)}


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_keep_last_k_prunes_only_the_checkpoints_this_run_wrote(tmp_path):
    old = Checkpointer(tmp_path, max_to_keep=3, run_id="old")
    for step in (1, 2):
        old.save(step, _state(step))
    legacy = Checkpointer(tmp_path, max_to_keep=3)  # no run id: a checkpoint from before run ids
    legacy.manager.save(3, args=checkpoint_lib.ocp.args.Composite(
        state=checkpoint_lib.ocp.args.StandardSave(_state(3.0)), input=checkpoint_lib.ocp.args.JsonSave({})))
    new = Checkpointer(tmp_path, max_to_keep=1, run_id="new")
    for step in (4, 5, 6):
        new.save(step, _state(step))
    assert new.all_steps() == [1, 2, 3, 6]
    assert [new.run_of(s) for s in new.all_steps()] == ["old", "old", None, "new"]


def test_restore_skips_another_runs_checkpoints_and_never_restarts_silently(tmp_path):
    other = Checkpointer(tmp_path, run_id="other")
    other.save(5, _state(5.0))
    other.save(7, _state(7.0))
    before = _tree(tmp_path)
    with pytest.raises(UnrestorableCheckpointsError) as err:
        Checkpointer(tmp_path, run_id="mine").restore(_state(0.0))
    message = str(err.value)
    assert f"{tmp_path / '5'}: written by another run (other, this is mine)" in message
    assert f"{tmp_path / '7'}" in message and "new workdir" in message
    assert _tree(tmp_path) == before


def test_when_no_checkpoint_fits_the_state_each_is_listed_with_its_reason(tmp_path):
    ckpt = Checkpointer(tmp_path, run_id="r")
    ckpt.save(1, _state(1.0))
    ckpt.save(2, _state(2.0))
    before = _tree(tmp_path)
    with pytest.warns(RuntimeWarning, match="could not be restored"):
        with pytest.raises(UnrestorableCheckpointsError, match=r"2 checkpoint\(s\) in .*none can be restored") as err:
            Checkpointer(tmp_path, run_id="r").restore({"v": np.zeros((3,), np.float32)})  # another structure
    assert str(tmp_path / "1") in str(err.value) and str(tmp_path / "2") in str(err.value)
    assert _tree(tmp_path) == before
    assert Checkpointer(tmp_path / "empty", run_id="r").restore(_state(0.0)) is None  # nothing there: fresh start


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    ckpt = Checkpointer(tmp_path, run_id="r")
    ckpt.save(1, _state(1.0))
    ckpt.save(2, _state(2.0))
    for path in (tmp_path / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*2 could not be restored"):
        state, _, step = Checkpointer(tmp_path, run_id="r").restore(_state(0.0))
    assert step == 1 and state["w"][0] == 1.0


def test_a_full_disk_during_a_save_is_one_error_with_the_path_and_the_free_space(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "ckpts", run_id="r")
    ckpt.save(1, _state(1.0))

    def full_disk(step, args, force):  # what Orbax raises when tensorstore meets ENOSPC (measured on a tmpfs)
        (tmp_path / "ckpts" / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
                         f'"{tmp_path}/ckpts/{step}.orbax-checkpoint-tmp/state/": No space left on device '
                         "[os_error_code='28']")

    monkeypatch.setattr(ckpt.manager, "save", full_disk)
    with pytest.raises(CheckpointSaveError) as err:
        ckpt.save(2, _state(2.0))
    message = str(err.value)
    assert f"could not save the checkpoint of step 2 to {tmp_path / 'ckpts' / '2'}: no space left on device" in message
    assert "free there" in message and f"the last complete checkpoint is {tmp_path / 'ckpts' / '1'}" in message
    assert not list((tmp_path / "ckpts").glob("2.orbax-checkpoint-tmp*"))  # the partial save is gone
    assert ckpt.all_steps() == [1]

    def no_space(step, args, force):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", no_space)
    with pytest.raises(CheckpointSaveError, match="no space left on device"):
        ckpt.save(3, _state(3.0))

    def bug(step, args, force):
        raise TypeError("a bug, not the disk")

    monkeypatch.setattr(ckpt.manager, "save", bug)
    with pytest.raises(TypeError, match="a bug"):  # anything else keeps its own error
        ckpt.save(4, _state(4.0))


def test_the_closed_event_loop_noise_is_dropped_and_other_unraisables_are_not(monkeypatch):
    seen = []
    monkeypatch.setattr(checkpoint_lib, "_previous_unraisablehook", lambda u: seen.append(u.exc_value))

    class Unraisable:
        def __init__(self, exc):
            self.exc_value = exc

    checkpoint_lib._drop_closed_loop_noise(Unraisable(RuntimeError("Event loop is closed")))
    other = RuntimeError("something else")
    checkpoint_lib._drop_closed_loop_noise(Unraisable(other))
    assert seen == [other]


def test_unretrieved_disk_full_write_futures_are_not_logged_but_other_failures_are():
    """A full disk fails several of the writer's futures; asyncio would log each unretrieved one on collection."""
    checkpoint_lib._install_noise_filter()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        for exc in (ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']"),
                    OSError(errno.ENOSPC, "No space left on device"), ValueError("a real bug")):
            future = loop.create_future()
            future.set_exception(exc)
            del future  # never retrieved: asyncio reports it when the future is collected
            gc.collect()
    finally:
        loop.close()
        asyncio_logger.removeHandler(handler)
    assert [str(r.exc_info[1]) for r in records] == ["a real bug"]


def test_best_on_validation_only_replaces_its_own_run(tmp_path):
    foreign = Checkpointer(tmp_path, max_to_keep=2, run_id="other")
    foreign.save(3, _state(3.0), {"accuracy": 0.9})
    best = BestCheckpoint(tmp_path, "accuracy", run_id="mine")
    assert best.step is None and best.score is None
    assert best.offer(5, 0.1, _state(5.0)) and best.offer(6, 0.2, _state(6.0))
    assert best.checkpointer.all_steps() == [3, 6]
    assert best.restore(_state(0.0))[1:] == (6, pytest.approx(0.2))
    assert not math.isnan(best.score)


def test_a_resume_drops_the_metric_rows_past_the_restored_step(tmp_path):
    rows = [{"step": s, "kind": "train"} for s in range(1, 7)] + [{"step": 6, "kind": "eval"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "ki')
    assert drop_rows_after(tmp_path, 4) == 4  # steps 5, 6, the eval row at 6 and the cut-short line
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3, 4]
    assert drop_rows_after(tmp_path, 4, ("train",)) == 1
    assert drop_rows_after(tmp_path / "none", 0) == 0
