"""One host of a multi-process CPU run: ``jax.distributed`` over local processes with gloo collectives.

    python tests/helpers/multihost_worker.py --process-id 0 --num-processes 2 \
        --coordinator 127.0.0.1:12345 --local-devices 1 --out results.npz

Every process feeds its own rows of the same global batch (the global batch split by
process index, ``index`` = the rows' global positions) through ``Runner(mode)`` over all
processes' devices, trains a few steps and writes its copy of the replicated state to
``<out stem>.<process id>.npz``.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import cpu_setup
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--coordinator", required=True, help="host:port of process 0's coordinator service")
    parser.add_argument("--local-devices", type=int, default=1, help="CPU devices of each process")
    parser.add_argument("--mode", default="shard_map", choices=("shard_map", "pmap"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=int, default=60, help="seconds to wait for the other processes")
    args = parser.parse_args(argv)
    cpu_setup.configure(args.local_devices)

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10; explicit here
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id, initialization_timeout=args.timeout,
                               heartbeat_timeout_seconds=args.timeout, shutdown_timeout_seconds=args.timeout)
    import parallel_common as common

    from ib_attention_jax.runtime.parallel import Runner, host_batch_index

    assert jax.process_count() == args.num_processes and jax.process_index() == args.process_id
    assert jax.local_device_count() == args.local_devices
    assert jax.device_count() == args.local_devices * args.num_processes
    t0 = time.perf_counter()
    model, tx, step_config, state = common.build()
    host_rows = common.GLOBAL_BATCH // args.num_processes
    index = host_batch_index(host_rows)
    rows = slice(int(index[0]), int(index[-1]) + 1)
    host_batches = [{"image": b["image"][rows], "label": b["label"][rows], "index": index}
                    for b in common.global_batches()]
    runner = Runner(args.mode)
    final, metrics = common.train(runner, model, tx, step_config, state, host_batches)
    out = pathlib.Path(args.out)
    np.savez(out.with_suffix(f".{args.process_id}.npz"),
             **common.flatten(f"{args.mode}:{jax.device_count()}", final, metrics, runner.trace_counts))
    print(f"process {args.process_id}: {time.perf_counter() - t0:.1f}s, loss {metrics['total'].tolist()}",
          flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
