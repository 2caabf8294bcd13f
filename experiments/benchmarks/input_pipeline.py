"""Images per second of the training input pipelines: CIFAR-shaped, CUB-shaped and cluttered_digits.

    python -m experiments.benchmarks.input_pipeline --workers 0,1,2

The CIFAR- and CUB-shaped pipelines read generated data with the exact features of tfds's cifar10 and
caltech_birds2011 (`synthetic_images`: 32x32 PNG; 300-500 px JPEG with box and segmentation mask), built
once into --data_dir, through the same path as the real datasets: ArrayRecord, decoding, the official
augmentation, batching. cluttered_digits is the real dataset. Each figure is measured after the first batch
(which includes starting the worker processes) over --batches batches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from experiments.support import synthetic_images
from ib_attention_jax import data
from ib_attention_jax.data.recipes import Recipe

PIPELINES = {  # name -> (recipe, per-host batch size of the official recipe)
    "cifar (synthetic_images/cifar)": (synthetic_images.recipe("cifar"), 128),
    "cub (synthetic_images/cub)": (synthetic_images.recipe("cub"), 16),
    "cluttered_digits": (data.get_recipe("cluttered_digits"), 128),
}


def images_per_second(
    recipe: Recipe, batch_size: int, data_dir: str, num_workers: int, num_threads: int, num_batches: int
) -> float:
    """Training batches read after a first, untimed one; returns images per second."""
    it = data.make_train_iterator(
        recipe,
        batch_size=batch_size,
        seed=0,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        num_workers=num_workers,
        num_threads=num_threads,
    )
    try:
        next(it)
        start = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        return num_batches * batch_size / (time.perf_counter() - start)
    finally:
        it.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        default=os.path.join(tempfile.gettempdir(), "ib_attention_bench_data"),
        help="where the generated datasets are built once (kept between runs)",
    )
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts to measure")
    parser.add_argument("--threads", type=int, default=4, help="reading threads per process")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--only", default="", help="measure only pipelines whose name contains this")
    args = parser.parse_args()

    for config in ("cifar", "cub"):
        synthetic_images.build(config, args.data_dir)
    data.build_cluttered_digits(args.data_dir)

    print(f"CPU cores: {os.cpu_count()}, threads per process: {args.threads}, timed batches: {args.batches}")
    print(f"{'pipeline':34s} {'batch':>5s} {'workers':>7s} {'images/s':>9s}")
    for name, (recipe, batch_size) in PIPELINES.items():
        if args.only not in name:
            continue
        for workers in (int(w) for w in args.workers.split(",")):
            rate = images_per_second(recipe, batch_size, args.data_dir, workers, args.threads, args.batches)
            print(f"{name:34s} {batch_size:5d} {workers:7d} {rate:9.0f}", flush=True)


if __name__ == "__main__":
    main()
