"""Hosts stop together: a SIGTERM on one host makes every host save the same step and exit 0.

Two CLI processes train as two hosts (``jax.distributed`` with gloo CPU collectives, one CPU device
each, one workdir). SIGTERM goes to the second process only; the stop request travels in the next
train step (``lax.pmax`` over the devices), so both processes leave the loop after the same step,
save it together and exit 0. The run resumed from that checkpoint ends bit-identical to one that
was never interrupted.
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_multihost import _gloo_available, free_port
from test_training_loop import REPO, SMALL
from xla_flags import add_fast_compile_flags

from ib_attention_jax import data
from ib_attention_jax.runtime.parallel import STOP, Runner
from ib_attention_jax.training.checkpoint import Checkpointer

NUM_PROCESSES = 2
TIMEOUT = 240  # seconds for one multi-process run (start, compile, train, evaluate) on a busy 2-core machine


def _toy_step(state, batch):
    return state + jnp.mean(batch["x"]), {"mean": jnp.mean(batch["x"])}


@pytest.mark.parametrize("mode", ("shard_map", "pmap"))
def test_the_train_step_returns_the_largest_stop_request(mode):
    runner = Runner(mode, jax.devices()[:1])
    step = runner.compile_train_step(_toy_step)
    state = runner.replicate(np.zeros((), np.float32))
    feed = {"x": np.ones((4, 3), np.float32)}
    for request in (0, int(signal.SIGTERM), 0):
        state, metrics = step(state, runner.shard_batch(feed, stop=request))
        assert int(np.asarray(metrics[STOP])) == request
    assert runner.trace_counts == {"train_step": 1}
    other = Runner(mode, jax.devices()[:1])  # a batch without the entry: no agreement, no extra metric
    _, metrics = other.compile_train_step(_toy_step)(other.replicate(np.zeros((), np.float32)), other.shard_batch(feed))
    assert STOP not in metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("preemption_data")
    data.build_cluttered_digits(str(path))
    return str(path)


def _launch(workdir: pathlib.Path, data_dir: str, num_steps: int, logs: pathlib.Path) -> list[subprocess.Popen]:
    """The CLI as two hosts on this machine, training the same run in ``workdir``."""
    coordinator = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    add_fast_compile_flags(env)
    procs = []
    for i in range(NUM_PROCESSES):
        cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/quickstart.py",
               f"--workdir={workdir}", f"--config.data_dir={data_dir}", *SMALL, "--config.model_kwargs.conv_impl=xla",
               "--config.optimizer.schedule=constant", f"--config.num_steps={num_steps}", "--config.log_every_steps=1",
               "--config.checkpoint_every_steps=100000", "--config.distributed=True",
               f"--config.coordinator_address={coordinator}", f"--config.num_processes={NUM_PROCESSES}",
               f"--config.process_id={i}"]
        log = open(logs.with_suffix(f".{i}.log"), "w+")  # noqa: SIM115 - closed in _wait
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        procs[-1].log = log
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    """Every process's output once all have exited; fails (killing the rest) if one does not exit 0 in time."""
    deadline, failed = time.monotonic() + TIMEOUT, None
    for i, proc in enumerate(procs):
        try:
            if proc.wait(timeout=max(deadline - time.monotonic(), 1)):
                failed = failed or f"process {i} exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            failed = failed or f"process {i} ran past {TIMEOUT}s"
            break
    outputs = []
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log.seek(0)
        outputs.append(proc.log.read())
        proc.log.close()
    if failed:
        pytest.fail(failed + "".join(f"\n--- process {i} ---\n{text[-4000:]}" for i, text in enumerate(outputs)))
    return outputs


def _train_rows(workdir: pathlib.Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return (workdir / "metrics.jsonl").read_text().count('"kind": "train"')
    return 0


def _final_leaves(workdir: pathlib.Path, step: int) -> list[np.ndarray]:
    state, _, _ = Checkpointer(workdir / "checkpoints").restore(None, step=step)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_sigterm_on_one_host_stops_both_at_the_same_step_and_the_run_resumes_exactly(tmp_path, data_dir):
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    procs = _launch(stopped, data_dir, 100000, tmp_path / "stopped")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and _train_rows(stopped) < 3 and all(p.poll() is None for p in procs):
        time.sleep(0.3)
    procs[1].send_signal(signal.SIGTERM)  # the second host only
    outputs = _wait(procs)
    saved = [line for text in outputs for line in text.splitlines() if "saved the checkpoint of step" in line]
    assert len(saved) == NUM_PROCESSES, outputs
    assert saved[0].startswith("SIGTERM (received by another host): saved the checkpoint of step "), saved
    assert saved[1].startswith("SIGTERM: saved the checkpoint of step "), saved
    steps = {int(line.split("of step ")[1].split()[0]) for line in saved}
    assert len(steps) == 1, saved  # both hosts saved the same step
    (step,) = steps
    assert 3 <= step < 100000
    assert Checkpointer(stopped / "checkpoints").all_steps() == [step]
    (row,) = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines() if '"preempted"' in x]
    assert (row["step"], row["signal"]) == (step, "SIGTERM")

    target = step + 2
    _wait(_launch(stopped, data_dir, target, tmp_path / "resumed"))
    _wait(_launch(straight, data_dir, target, tmp_path / "straight"))
    for a, b in zip(_final_leaves(straight, target), _final_leaves(stopped, target), strict=True):
        np.testing.assert_array_equal(b, a)
