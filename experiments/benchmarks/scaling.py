"""Data-parallel scaling on simulated CPU devices, and the input pipeline's rate beside the step's.

    .venv/bin/python -m experiments.benchmarks.scaling
    .venv/bin/python -m experiments.benchmarks.scaling --devices 1,2,4,8 --mode pmap --steps 10

Runs the quickstart config's train step (``experiments/configs/quickstart.py``: small_aib,
global batch 64, Adam, cluttered_digits, which is built into ``--data_dir`` first if it is
missing) on the first 1, 2, 4 and 8 of 8 simulated CPU devices
(``--xla_force_host_platform_device_count=8``), each count from the same initial state on
the same batches read from the training pipeline.

Simulated devices share the machine's cores, so the ideal is the same step time at every
count: the time relative to 1 device is the cost of splitting the step (a per-device
program per step, the cross-device means of the gradients and BatchNorm statistics, the
smaller per-device matmuls). Correctness: after the same steps, the largest parameter
difference from the 1-device run (relative to the largest parameter) and the last loss.

Then the training input pipeline of the same config (decode, augmentation, batching) at
the same batch size, with 0 and ``--workers`` worker processes, beside the 1-device
step's images/s: a pipeline slower than the step leaves the device waiting.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import os

# Before jax is imported (by the imports below): the simulated devices.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.input_pipeline import images_per_second  # noqa: E402
from ib_attention_jax import cpu_memory  # noqa: E402
from ib_attention_jax import data as data_lib  # noqa: E402
from ib_attention_jax.configs.quickstart import quickstart  # noqa: E402
from ib_attention_jax.runtime.parallel import Runner, host_batch_index, train_feed  # noqa: E402
from ib_attention_jax.training.loop import build_experiment  # noqa: E402
from ib_attention_jax.training.step import make_train_step  # noqa: E402


def read_batches(config, host_batch: int, count: int) -> list[dict[str, np.ndarray]]:
    """The first ``count`` training batches of ``config`` (host arrays) with their example positions."""
    it = data_lib.make_train_iterator(config.dataset, batch_size=host_batch, seed=config.seed,
                                      data_dir=config.data_dir, num_workers=0,
                                      normalization=config.get("normalization"))
    try:
        batches = [next(it) for _ in range(count)]
    finally:
        it.close()
    index = host_batch_index(host_batch)
    return [train_feed(b["image"], b["label"], index) for b in batches]


def run_on(num_devices: int, mode: str, exp, host_state, batches, warmup: int, repeats: int) -> dict[str, Any]:
    """Trains on ``batches`` with the first ``num_devices`` devices; times steps after ``warmup``."""
    runner = Runner(mode, jax.devices()[:num_devices])
    step = runner.compile_train_step(make_train_step(exp.model, exp.tx, exp.step_config))
    state = runner.replicate(host_state)
    sharded = [runner.shard_batch(b) for b in batches]
    t = time.perf_counter()
    state, metrics = step(state, sharded[0])
    jax.block_until_ready(state)
    first_step_s = time.perf_counter() - t
    for batch in sharded[1:1 + warmup]:
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    timed = sharded[1 + warmup:]
    per_run = max(len(timed) // repeats, 1)
    runs = []
    for r in range(repeats):
        t = time.perf_counter()
        for batch in timed[r * per_run:(r + 1) * per_run]:
            state, metrics = step(state, batch)
        jax.block_until_ready(state)
        runs.append(per_run / (time.perf_counter() - t))
    final = runner.unreplicate(state)
    return {"steps_per_s": statistics.median(runs), "runs": runs, "first_step_s": first_step_s,
            "loss": float(jax.device_get(metrics["total"])), "params": jax.device_get(final.params)}


def max_relative_difference(a, b) -> float:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    scale = max(float(np.max(np.abs(x))) for x in leaves_b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(leaves_a, leaves_b,
                                                                                   strict=True)) / scale


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts (at most 8)")
    parser.add_argument("--mode", default="shard_map", choices=("shard_map", "pmap"))
    parser.add_argument("--data_dir", default="workdir/tensorflow_datasets",
                        help="where cluttered_digits is (or is built); the same place `make demo` uses")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per device count")
    parser.add_argument("--repeats", type=int, default=3, help="the timed steps are split into this many runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the second pipeline figure")
    parser.add_argument("--pipeline-batches", type=int, default=30, help="timed batches per pipeline figure")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.devices.split(",")]
    if not counts or min(counts) < 1 or max(counts) > len(jax.devices()):
        parser.error(f"--devices must be counts between 1 and {len(jax.devices())}, got {args.devices}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0 or args.steps < args.repeats:
        parser.error("--steps >= --repeats >= 1 and --warmup >= 0")
    args.counts = counts
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = quickstart()
    config.data_dir = args.data_dir
    data_lib.build_cluttered_digits(args.data_dir)
    exp = build_experiment(config)
    if any(exp.host_batch % n for n in args.counts):
        raise SystemExit(f"the batch of {exp.host_batch} does not split over {args.counts} devices")
    host_state = jax.tree_util.tree_map(np.asarray, exp.state)
    batches = read_batches(config, exp.host_batch, 1 + args.warmup + args.steps)
    load = os.getloadavg()
    print(f"{config.model}, global batch {exp.host_batch}, {args.mode}, {len(jax.devices())} simulated CPU devices on "
          f"{os.cpu_count()} cores, load average {load[0]:.2f}", flush=True)
    results: dict[int, dict[str, Any]] = {}
    for n in args.counts:
        results[n] = run_on(n, args.mode, exp, host_state, batches, args.warmup, args.repeats)
        print(f"  {n} device(s): {results[n]['steps_per_s'] * exp.host_batch:.0f} img/s", flush=True)
    base = results[args.counts[0]]
    rows = []
    for n, r in results.items():
        rows.append({"devices": n, "per_device_batch": exp.host_batch // n,
                     "img_per_s": round(r["steps_per_s"] * exp.host_batch, 1),
                     "time_vs_first": round(base["steps_per_s"] / r["steps_per_s"], 3),
                     "first_step_s": round(r["first_step_s"], 2), "loss": round(r["loss"], 6),
                     "max_param_diff": max_relative_difference(r["params"], base["params"])})
    recipe = data_lib.get_recipe(config.dataset)
    pipeline = {w: images_per_second(recipe, exp.host_batch, args.data_dir, w, 4, args.pipeline_batches)
                for w in sorted({0, args.workers})}

    print()
    print(f"{'devices':>7s} {'batch/dev':>9s} {'img/s':>7s} {'time x':>7s} {'1st step s':>10s} {'loss':>9s} "
          f"{'max |dparam| / max |param| vs ' + str(args.counts[0]):>34s}")
    for row in rows:
        print(f"{row['devices']:7d} {row['per_device_batch']:9d} {row['img_per_s']:7.0f} {row['time_vs_first']:7.2f} "
              f"{row['first_step_s']:10.1f} {row['loss']:9.4f} {row['max_param_diff']:34.1e}")
    step_rate = rows[0]["img_per_s"]
    for w, rate in pipeline.items():
        print(f"input pipeline, {w} worker process(es): {rate:.0f} img/s = {rate / step_rate:.1f}x the "
              f"{args.counts[0]}-device step's {step_rate:.0f} img/s")
    load = os.getloadavg()
    result = {"model": config.model, "global_batch": exp.host_batch, "mode": args.mode, "rows": rows,
              "pipeline_img_per_s": {str(w): round(r, 1) for w, r in pipeline.items()},
              "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "cores": os.cpu_count(),
              "loadavg_end": [round(v, 2) for v in load], "jax": jax.__version__,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    cpu_memory.reexec_with_huge_pages("experiments.benchmarks.scaling", sys.argv[1:])
    main()
