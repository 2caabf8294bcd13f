"""Data parallelism: the same steps on 1, 2, 4 and 8 (simulated CPU) devices, under shard_map and pmap.

The multi-device runs need ``jax_num_cpu_devices`` set before jax creates its backend,
which pytest's process already has, so they run in subprocesses
(``tests/helpers/parallel_equivalence.py``): one with 8 devices for the 1-device
reference and the 8-device runs, one with 4 devices for the runs on fewer devices
(two processes keep each test well under a minute on a small machine).
"""

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ib_attention_jax.runtime.parallel import AXIS, RecompilationError, Runner, host_batch_index

HELPERS = pathlib.Path(__file__).parent / "helpers"
ROOT = pathlib.Path(__file__).parents[1]
NUM_DEVICES = 8
REFERENCE = "shard_map:1"
RUNS_8 = ("shard_map:8", "pmap:8")
RUNS_FEWER = ("shard_map:2", "shard_map:4", "pmap:2")  # each run compiles its own step: keep these short
TOL = 1e-5


def run_helper(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``tests/helpers/<script>`` in a fresh interpreter; fails the test with its output on an error."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the helper sets its own device count
    try:
        proc = subprocess.run([sys.executable, str(HELPERS / script), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{script} ran past {timeout}s:\n{err.stdout}\n{err.stderr}")
    if proc.returncode:
        pytest.fail(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


def load_runs(path: pathlib.Path) -> dict[str, dict]:
    """npz written by the helpers -> {run: {'params': {path: array}, 'batch_stats', 'metrics', 'trace_counts', ...}}."""
    runs: dict[str, dict] = {}
    with np.load(path) as z:
        for key in z.files:
            run, group, *name = key.split("|")
            entry = runs.setdefault(run, {"params": {}, "batch_stats": {}, "metrics": {}})
            if name:
                entry[group][name[0]] = z[key]
            elif group == "trace_counts":
                entry[group] = json.loads(str(z[key]))
            else:
                entry[group] = z[key]
    return runs


def assert_same_training(run: dict, ref: dict, tol: float = TOL) -> None:
    """Params and BatchNorm statistics within ``tol`` x the largest magnitude; metrics within rtol ``tol``."""
    for group in ("params", "batch_stats"):
        assert run[group].keys() == ref[group].keys(), group
        scale = max(float(np.max(np.abs(v))) for v in ref[group].values())
        worst = max(float(np.max(np.abs(run[group][k] - ref[group][k]))) for k in ref[group])
        assert worst <= tol * scale, f"{group}: max |diff| {worst:.3g} > {tol} x max |value| {scale:.3g}"
    assert run["metrics"].keys() == ref["metrics"].keys()
    for name, value in ref["metrics"].items():
        np.testing.assert_allclose(run["metrics"][name], value, rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_array_equal(run["metrics"]["anchor_usage"], ref["metrics"]["anchor_usage"])
    assert int(run["step"]) == int(ref["step"]) == 3


def _train(tmp_path_factory, num_devices: int, runs: tuple[str, ...]) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("parallel") / "results.npz"
    run_helper("parallel_equivalence.py", "--num-devices", str(num_devices), "--out", str(out), "--runs", *runs)
    return load_runs(out)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """The 1-device reference and the 8-device runs."""
    return _train(tmp_path_factory, NUM_DEVICES, (REFERENCE,) + RUNS_8)


@pytest.fixture(scope="module")
def results_fewer(tmp_path_factory) -> dict[str, dict]:
    """Runs on 2 and 4 of 4 devices."""
    return _train(tmp_path_factory, 4, RUNS_FEWER)


@pytest.mark.parametrize("run", RUNS_8)
def test_eight_devices_match_one_device(results, run):
    assert_same_training(results[run], results[REFERENCE])
    assert results[run]["trace_counts"] == {"train_step": 1}


@pytest.mark.parametrize("run", RUNS_FEWER)
def test_fewer_devices_match_one_device(results, results_fewer, run):
    assert_same_training(results_fewer[run], results[REFERENCE])
    assert results_fewer[run]["trace_counts"] == {"train_step": 1}


def test_reference_traced_once(results):
    assert results[REFERENCE]["trace_counts"] == {"train_step": 1}


def test_training_moved_the_parameters(results):
    """Guards the comparisons above against a step that changes nothing."""
    ref = results[REFERENCE]
    assert np.all(np.isfinite(ref["metrics"]["total"]))
    assert ref["metrics"]["grad_norm"].min() > 0
    assert len({float(x) for x in ref["metrics"]["total"]}) == 3


@pytest.mark.parametrize("mode", ("shard_map", "pmap"))
def test_indivisible_host_batch_names_the_fix(results, mode):
    message = str(results["indivisible"][f"{mode}:{NUM_DEVICES}"])
    assert f"not divisible by the {NUM_DEVICES} local devices" in message
    assert "choose a batch size divisible by the device count" in message


# -- in-process, on pytest's own (single) device ----------------------------------------------------------------


def _toy_step(state, batch):
    """A pmap-style step as cheap to compile as possible."""
    total = lax.pmean(jnp.mean(batch["x"]), AXIS)
    return state + total, {"mean": total}


@pytest.mark.parametrize("mode", ("shard_map", "pmap"))
def test_new_batch_shape_raises_recompilation_error(mode):
    runner = Runner(mode, jax.devices()[:1])
    step = runner.compile_train_step(_toy_step)
    state = runner.replicate(np.zeros((), np.float32))
    for _ in range(2):  # the same shape twice: one trace
        state, metrics = step(state, runner.shard_batch({"x": np.ones((16, 3), np.float32)}))
    chex.assert_trees_all_close(runner.unreplicate(state), np.float32(2.0))
    assert float(np.asarray(metrics["mean"])) == 1.0
    assert runner.trace_counts == {"train_step": 1}
    with pytest.raises(RecompilationError, match="train_step was traced 2 times"):
        step(state, runner.shard_batch({"x": np.ones((8, 3), np.float32)}))


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match=r"parallel mode must be one of \('shard_map', 'pmap'\), got 'bogus'"):
        Runner("bogus")


def test_host_batch_index():
    np.testing.assert_array_equal(host_batch_index(4, process_index=0), [0, 1, 2, 3])
    np.testing.assert_array_equal(host_batch_index(4, process_index=1), [4, 5, 6, 7])
    assert host_batch_index(4).dtype == np.int32
