"""Asynchronous checkpoints of global arrays: training goes on while Orbax writes, nothing is lost.

In process (pytest's one CPU device): a save returns while its files are still being written (a commit
held open by the test), every query and the next save wait for it, a background write that fails
surfaces as the one CheckpointSaveError a synchronous save raises, pruning waits for completion, and
an async save of buffers the next step donates still writes the values it was given. In subprocesses
with 8 simulated devices: checkpoints restore under another mode and device count, and a run killed
with SIGKILL while a sharded checkpoint is being written resumes bit-exact from the last complete one.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax import lax
from test_parallel import run_helper
from test_training_loop import REPO, SMALL
from xla_flags import add_fast_compile_flags

from ib_attention_jax import data
from ib_attention_jax.runtime.parallel import AXIS, Runner
from ib_attention_jax.training.checkpoint import Checkpointer, CheckpointSaveError
from ib_attention_jax.training.loop import KILL_DURING_SAVE_ENV
from ib_attention_jax.training.selection import BestCheckpoint

NO_SPACE = "No space left on device [os_error_code='28']"  # what tensorstore reports on a full disk


class _Commit:
    """A commit future of the JSON items that the test holds open (``release``) and may make fail."""

    def __init__(self, fail: str | None = None) -> None:
        self.released = threading.Event()
        self.fail = fail

    def result(self, timeout=None):
        if not self.released.wait(timeout=60):
            raise TimeoutError("the test never released the commit")
        if self.fail:
            raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "input": {self.fail}')


@pytest.fixture
def held_commit(monkeypatch):
    """Every save's JSON items get one more commit future, held until the test releases it."""
    commits: list[_Commit] = []
    original = ocp.JsonCheckpointHandler.async_save

    async def async_save(self, *args, **kwargs):
        futures = list(await original(self, *args, **kwargs) or [])
        commits.append(_Commit(fail=held_commit.fail))
        return futures + [commits[-1]]

    def release() -> None:
        for commit in commits:
            commit.released.set()

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", async_save)
    held_commit.fail = None
    held_commit.release = release
    return held_commit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("async_checkpoint_data")
    data.build_cluttered_digits(str(path))
    return str(path)


def _state(value: float) -> dict:
    return {"w": jnp.full((64, 64), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _tmp_dirs(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.orbax-checkpoint-tmp*"))


def test_a_save_returns_while_writing_and_queries_wait_for_it(tmp_path, held_commit):
    ckpt = Checkpointer(tmp_path, max_to_keep=1, run_id="r", asynchronous=True)
    ckpt.save(1, _state(1.0), {"position": 1})
    assert ckpt.in_flight() == 1 and _tmp_dirs(tmp_path)  # training would go on here
    assert not (tmp_path / "1").exists()
    held_commit.release()
    assert ckpt.all_steps() == [1] and ckpt.in_flight() is None and not _tmp_dirs(tmp_path)
    ckpt.save(2, _state(2.0), {"position": 2})
    assert (tmp_path / "1").exists()  # keep-last-1 prunes only once step 2 is complete
    held_commit.release()
    ckpt.wait()
    assert ckpt.all_steps() == [2]
    state, input_state, step = ckpt.restore(_state(0.0))
    assert (step, input_state, float(state["w"][0, 0])) == (2, {"position": 2}, 2.0)
    ckpt.close()


def test_a_failed_background_write_is_one_save_error_at_the_next_save_or_at_wait(tmp_path, held_commit):
    ckpt = Checkpointer(tmp_path / "ckpts", run_id="r", asynchronous=True)
    held_commit.fail = None
    ckpt.save(1, _state(1.0))
    held_commit.release()
    ckpt.wait()
    held_commit.fail = NO_SPACE
    ckpt.save(2, _state(2.0))  # returns: the write fails in the background
    held_commit.release()
    with pytest.raises(CheckpointSaveError) as err:
        ckpt.save(3, _state(3.0))  # the next save reports it, before starting its own
    message = str(err.value)
    assert f"could not save the checkpoint of step 2 to {tmp_path / 'ckpts' / '2'}: no space left on device" in message
    assert "free there" in message and f"the last complete checkpoint is {tmp_path / 'ckpts' / '1'}" in message
    assert not _tmp_dirs(tmp_path / "ckpts") and ckpt.all_steps() == [1]  # the partial write is gone
    ckpt.save(4, _state(4.0))
    held_commit.release()
    with pytest.raises(CheckpointSaveError, match="step 4 .*no space left on device"):
        ckpt.close()  # ... or the wait at the end
    assert Checkpointer(tmp_path / "ckpts").all_steps() == [1]


def test_best_on_validation_deletes_the_old_best_only_once_the_new_one_is_complete(tmp_path, held_commit):
    best = BestCheckpoint(tmp_path, "accuracy", asynchronous=True)
    assert best.offer(1, 0.5, _state(1.0))
    held_commit.release()
    assert best.offer(2, 0.6, _state(2.0))
    assert (tmp_path / "1").exists() and not (tmp_path / "2").exists()  # the new best is still being written
    held_commit.release()
    best.wait()
    assert best.checkpointer.all_steps() == [2]
    state, step, score = best.restore(_state(0.0))
    assert (step, score, float(state["w"][0, 0])) == (2, 0.6, 2.0)


def test_an_async_save_of_buffers_the_next_step_donates_writes_the_values_it_was_given(tmp_path):
    runner = Runner("shard_map", jax.devices()[:1])
    step = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x * 2 + 1, s), donate_argnums=0)
    state = runner.replicate({"w": np.arange(1 << 20, dtype=np.float32), "b": np.ones((3,), np.float32)})
    state = step(state)  # buffers the step produced, as in training
    expected = jax.tree_util.tree_map(np.array, state)  # host copies, taken before the save
    ckpt = Checkpointer(tmp_path, asynchronous=True)
    ckpt.save(1, runner.checkpoint_view(state))
    after = step(state)  # training goes on, donating the buffers being saved
    ckpt.wait()
    restored, _, _ = ckpt.restore(runner.abstract_state(expected))
    for key in expected:
        np.testing.assert_array_equal(np.asarray(restored[key]), expected[key])
        np.testing.assert_array_equal(np.asarray(after[key]), expected[key] * 2 + 1)
    later = step(after)  # once the save is complete nothing holds the buffers: donation takes them again
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(after))
    assert float(later["b"][0]) == 15.0


def _toy_step(state, batch):
    total = lax.pmean(jnp.mean(batch["x"]), AXIS)
    return jax.tree_util.tree_map(lambda x: x + total, state), {"mean": total}


@pytest.mark.parametrize("mode", ("shard_map", "pmap"))
def test_the_train_step_donates_the_state_placed_or_restored(tmp_path, mode):
    runner = Runner(mode, jax.devices()[:1])
    step = runner.compile_train_step(_toy_step)
    host = {"w": np.arange(1 << 16, dtype=np.float32)}
    feed = runner.shard_batch({"x": np.ones((2, 1), np.float32)})
    placed = runner.replicate(host)
    trained, _ = step(placed, feed)
    assert placed["w"].is_deleted()  # the step took its buffers
    ckpt = Checkpointer(tmp_path, asynchronous=True)
    ckpt.save(1, runner.checkpoint_view(trained), wait=True)
    restored = runner.from_checkpoint(ckpt.restore(runner.abstract_state(host))[0])
    again, _ = step(restored, feed)
    assert restored["w"].is_deleted()
    np.testing.assert_array_equal(np.asarray(runner.unreplicate(again)["w"]), host["w"] + 2)


def test_checkpoints_restore_under_another_mode_and_device_count(tmp_path):
    proc = run_helper("checkpoint_layouts.py", "--num-devices", "8", "--dir", str(tmp_path))
    assert "layouts: ok" in proc.stdout, proc.stdout


def _cli(workdir, data_dir, *extra, env=None):
    cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/quickstart.py",
           f"--workdir={workdir}", f"--config.data_dir={data_dir}", *SMALL, "--config.model_kwargs.conv_impl=xla",
           "--config.num_steps=6", "--config.checkpoint_every_steps=1", "--config.log_every_steps=1", *extra]
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(REPO),
           "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8", **(env or {})}
    add_fast_compile_flags(env)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)


def _train_steps(workdir: pathlib.Path) -> list[int]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def _final_state(workdir: pathlib.Path):
    state, _, step = Checkpointer(workdir / "checkpoints").restore(None, step=6)
    return state


def test_eight_devices_killed_during_an_async_save_resume_bit_exact(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _cli(straight, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((straight / "summary.json").read_text())["devices"] == 8
    proc = _cli(killed, data_dir, env={KILL_DURING_SAVE_ENV: "4"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "fault injection: SIGKILL while the checkpoint of step 4 is being written" in proc.stderr
    assert max(Checkpointer(killed / "checkpoints").all_steps()) == 3  # step 4 never completed
    assert _tmp_dirs(killed / "checkpoints")  # ... its write was cut short
    resumed = _cli(killed, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not _tmp_dirs(killed / "checkpoints")
    assert _train_steps(killed) == _train_steps(straight) and 4 in _train_steps(killed)  # step 4 logged once
    a, b = _final_state(straight), _final_state(killed)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
