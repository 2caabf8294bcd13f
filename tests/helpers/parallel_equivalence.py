"""Trains a few steps with several Runners on simulated CPU devices and saves the results to an npz.

    python tests/helpers/parallel_equivalence.py --num-devices 8 --out results.npz \
        --runs shard_map:1 shard_map:8 pmap:8

Each run ``mode:n`` is ``Runner(mode, jax.devices()[:n])`` on the same global batches from
the same initial state. ``indivisible|mode:N`` holds the ValueError message (or "") of
feeding 1.5 x N rows to a Runner over all N devices. Run it as its own process: the CPU device count is fixed before
jax creates its backend.
"""

from __future__ import annotations

import argparse
import time

import cpu_setup
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-devices", type=int, default=8)
    parser.add_argument("--runs", nargs="+", default=["shard_map:1", "shard_map:8", "pmap:8"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-fast-compile", dest="fast_compile", action="store_false")
    args = parser.parse_args(argv)
    cpu_setup.configure(args.num_devices, args.fast_compile)

    import jax
    import parallel_common as common

    from ib_attention_jax.runtime.parallel import Runner

    devices = jax.devices()
    if len(devices) != args.num_devices:
        raise SystemExit(f"wanted {args.num_devices} CPU devices, jax has {len(devices)}")
    model, tx, step_config, state = common.build()
    batches = common.global_batches()
    results: dict[str, np.ndarray] = {}
    for run in args.runs:
        mode, n = run.split(":")
        t0 = time.perf_counter()
        runner = Runner(mode, devices[:int(n)])
        final, metrics = common.train(runner, model, tx, step_config, state, batches)
        results.update(common.flatten(run, final, metrics, runner.trace_counts))
        print(f"{run}: {time.perf_counter() - t0:.1f}s, loss {metrics['total'].tolist()}", flush=True)
    for mode in sorted({run.split(":")[0] for run in args.runs}):  # the error for an indivisible host batch
        rows = len(devices) + len(devices) // 2 if len(devices) > 1 else 0
        try:
            Runner(mode, devices).shard_batch({k: v[:rows] for k, v in batches[0].items()})
            message = ""
        except ValueError as err:
            message = str(err)
        results[f"indivisible|{mode}:{len(devices)}"] = np.asarray(message)
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
