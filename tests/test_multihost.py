"""Multi-host data parallelism, simulated: two local processes joined by ``jax.distributed`` (gloo CPU collectives).

Each process is one "host" with its own CPU device(s) and feeds only its half of the
global batch; ``Runner`` spans every process's devices. Training must match a single
process that sees the whole global batch.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from test_parallel import REFERENCE, ROOT, assert_same_training, load_runs, run_helper

HELPERS = pathlib.Path(__file__).parent / "helpers"
NUM_PROCESSES = 2
TIMEOUT = 120  # seconds for all processes together (each takes ~20-30 s on a busy 2-core machine)


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Kills ``proc`` (one of ours) if it still runs."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_hosts(tmp_path: pathlib.Path, mode: str = "shard_map", local_devices: int = 1) -> list[dict]:
    """Launches the processes, waits for all of them (killing every one on a failure), returns each one's results."""
    out = tmp_path / f"{mode}.npz"
    coordinator = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs, logs, outputs, failed = [], [], [], None
    with contextlib.ExitStack() as stack:
        for i in range(NUM_PROCESSES):
            log = stack.enter_context(open(tmp_path / f"{mode}.{i}.log", "w+"))
            logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, str(HELPERS / "multihost_worker.py"), "--process-id", str(i),
                 "--num-processes", str(NUM_PROCESSES), "--coordinator", coordinator,
                 "--local-devices", str(local_devices), "--mode", mode, "--out", str(out), "--timeout", "60"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc)
            procs.append(proc)
        deadline = time.monotonic() + TIMEOUT
        for i, proc in enumerate(procs):
            try:
                if proc.wait(timeout=max(deadline - time.monotonic(), 1)):
                    failed = f"process {i} exited with {proc.returncode}"
                    break
            except subprocess.TimeoutExpired:
                failed = f"process {i} ran past {TIMEOUT}s"
                break
        if failed:
            for proc in procs:
                _stop(proc)
            for log in logs:
                log.seek(0)
                outputs.append(log.read())
    if failed:
        pytest.fail(failed + "".join(f"\n--- process {i} ---\n{text[-4000:]}" for i, text in enumerate(outputs)))
    return [load_runs(out.with_suffix(f".{i}.npz")) for i in range(NUM_PROCESSES)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One process, one device, the whole global batch."""
    out = tmp_path_factory.mktemp("multihost_reference") / "reference.npz"
    run_helper("parallel_equivalence.py", "--num-devices", "1", "--out", str(out), "--runs", REFERENCE)
    return load_runs(out)[REFERENCE]


def test_two_hosts_shard_map_match_one_process(tmp_path, reference):
    hosts = run_hosts(tmp_path, "shard_map", local_devices=1)
    for host in hosts:
        (run,) = host.values()
        assert_same_training(run, reference)
        assert run["trace_counts"] == {"train_step": 1}


def test_two_hosts_pmap_match_one_process(tmp_path, reference):
    hosts = run_hosts(tmp_path, "pmap", local_devices=2)
    for host in hosts:
        (run,) = host.values()
        assert_same_training(run, reference)
