"""The quickstart recipe's training rate: its step fed by the real input pipeline, as the training loop runs it.

    python -m experiments.benchmarks.quickstart_rate                  # builds cluttered_digits in a temp dir
    python -m experiments.benchmarks.quickstart_rate --data-dir workdir/tensorflow_datasets --steps 200

Builds the config of ``ib_attention_jax/configs/quickstart.py`` (small_aib, Adam, batch 64,
cluttered_digits: the embedded dataset, built offline into ``--data-dir`` or a temporary
folder that is removed afterwards) with the loop's own ``build_experiment``, compiles its
train step with the loop's ``Runner`` and measures, after ``--warmup`` steps:

* ``loop_img_per_s``: batches read from the training iterator, fed and stepped one after
  another as ``training/loop.py`` does (step t is dispatched, then step t-1's metrics are
  fetched; the clock stops once the last step has finished): the recipe's training rate;
* ``step_img_per_s``: the same step on one batch already on the device: the device's rate;
* ``pipeline_img_per_s``: a fresh iterator alone (``input_pipeline.images_per_second``, at least
  20 batches): the input's rate.

The smaller of the last two bounds the first. Prints a summary and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from typing import Any

MIN_PIPELINE_BATCHES = 20  # fewer would time the reader's read-ahead rather than its rate


def _timed_steps(step, state, batches, block) -> tuple[Any, float]:
    """Runs ``step`` over ``batches`` (an iterable of ready step inputs); returns the state and the seconds."""
    t = time.perf_counter()
    for batch in batches:
        state, _ = step(state, batch)
    block(state)
    return state, time.perf_counter() - t


def _loop_steps(step, state, feed, steps: int) -> tuple[Any, float]:
    """As ``training/loop.py`` runs: read and feed a batch, dispatch step t, then fetch step t-1's metrics."""
    import jax

    t = time.perf_counter()
    pending = None
    for _ in range(steps):
        state, metrics = step(state, feed())
        if pending is not None:
            jax.device_get(pending)
        pending = metrics
    jax.device_get(pending)
    jax.block_until_ready(state)
    return state, time.perf_counter() - t


def measure(data_dir: str, warmup: int, steps: int, batch_size: int | None = None) -> dict[str, Any]:
    """The three rates of the quickstart config over ``steps`` steps (see the module doc)."""
    import jax

    from experiments.benchmarks.input_pipeline import images_per_second
    from experiments.benchmarks.train_step import device_name, xla_flops
    from ib_attention_jax import data as data_lib
    from ib_attention_jax.configs.quickstart import quickstart
    from ib_attention_jax.runtime.parallel import Runner, host_batch_index, train_feed
    from ib_attention_jax.training.loop import build_experiment
    from ib_attention_jax.training.step import make_train_step

    config = quickstart()
    config.data_dir = data_dir
    if batch_size:
        config.batch_size = batch_size
    t = time.perf_counter()
    data_lib.build_cluttered_digits(data_dir)
    build_s = time.perf_counter() - t
    exp = build_experiment(config)
    runner = Runner(config.get("parallel", "shard_map"))
    step = runner.compile_train_step(make_train_step(exp.model, exp.tx, exp.step_config))
    index = host_batch_index(exp.host_batch)
    it = data_lib.make_train_iterator(config.dataset, batch_size=exp.host_batch, seed=config.seed, data_dir=data_dir,
                                      split=exp.info.train_split, num_workers=config.get("num_workers", 0),
                                      normalization=config.get("normalization"))
    try:
        def feed():
            batch = next(it)
            return runner.shard_batch(train_feed(batch["image"], batch["label"], index))

        state = runner.replicate(exp.state)
        first = feed()
        t = time.perf_counter()
        compiled = step.lower(state, first).compile() if hasattr(step, "lower") else step
        compile_s = time.perf_counter() - t
        flops, flops_source = xla_flops(compiled)
        state, _ = _timed_steps(compiled, state, [first] + [feed() for _ in range(warmup)], jax.block_until_ready)
        state, loop_s = _loop_steps(compiled, state, feed, steps)
        state, step_s = _timed_steps(compiled, state, [first] * steps, jax.block_until_ready)
    finally:
        it.close()
    pipeline_batches = max(steps, MIN_PIPELINE_BATCHES)
    pipeline_rate = images_per_second(data_lib.get_recipe(config.dataset), exp.host_batch, data_dir,
                                      config.get("num_workers", 0), 4, pipeline_batches)  # a fresh iterator
    images = steps * exp.host_batch
    step_rate = images / step_s
    return {"model": config.model, "dataset": config.dataset, "batch": exp.host_batch,
            "optimizer": config.optimizer.name, "num_workers": config.get("num_workers", 0),
            "warmup": warmup, "steps": steps,
            "loop_img_per_s": round(images / loop_s, 1), "step_img_per_s": round(step_rate, 1),
            "pipeline_img_per_s": round(pipeline_rate, 1), "pipeline_batches": pipeline_batches,
            "compile_s": round(compile_s, 2),
            "dataset_build_s": round(build_s, 2), "step_gflop": None if flops is None else round(flops / 1e9, 4),
            "step_tflops": None if flops is None else round(flops * step_rate / exp.host_batch / 1e12, 4),
            "flops_source": flops_source, "device": device_name(jax.devices()[0]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", default=None,
                        help="where cluttered_digits is (or is built); default: a temporary folder, removed after")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps after the first (compiled) one")
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each measurement")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        parser.error("--steps and --batch must be >= 1, --warmup >= 0")
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="quickstart_rate_")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # the dataset build's bars would fill the log
    try:
        result = measure(data_dir, args.warmup, args.steps, args.batch)
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{result['model']} on {result['dataset']}, batch {result['batch']}, {result['device']}: training loop "
          f"{result['loop_img_per_s']:.0f} img/s, step alone {result['step_img_per_s']:.0f}, input pipeline alone "
          f"{result['pipeline_img_per_s']:.0f}; compile {result['compile_s']:.1f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
