"""Where the JAX train step's time goes: the convolutions against everything else, measured in one run.

    .venv/bin/python -m experiments.benchmarks.step_profile --model vgg_aib --batch 32
    .venv/bin/python -m experiments.benchmarks.step_profile --model wrn_aib --batch 32 --steps 2

Compiles the benchmark's train step (``experiments/benchmarks/train_step.py``: the official
CIFAR recipe on one fixed batch) twice: as it is, and with every convolution replaced by
a stand-in of the same output shape that costs next to nothing (a strided slice of the
input, its channels tiled or cut, times a factor that is 1 but gives every kernel a
gradient). Both are timed interleaved (median of ``--repeats`` runs). The stand-in step's
time is what BatchNorm, ReLU, pooling, the attention and bottleneck heads, the losses and
the optimiser cost; the difference is the convolutions' share, and the difference of
XLA's FLOP counts over it is the convolutions' achieved GFLOP/s.

Per-convolution timings, against PyTorch's, are in ``conv_shapes.py``.

Caveat: the stand-in changes how XLA fuses what surrounds it. For ``vgg_aib`` at batch
32 the stand-in step took 4.1 s with the tiled 2x2 max-pool and 1.5 s with
``reduce_window`` pooling, while the real step took the same 4.0-4.1 s with either, so
its split is not trustworthy; ``wrn_aib`` (no max-pool) showed no such effect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator

import numpy as np

from experiments.benchmarks.train_step import AIB_MODELS, PLAIN_MODELS, JaxBench, limit_cpus


def _stand_in_conv(x, kernel, stride=1, padding=0, impl="auto"):
    """Same output shape as the convolution, next to no work; keeps a gradient path to ``kernel``.

    The output is the input, strided and tiled over channels to the convolution's
    output shape, times a factor that is 1 but has the kernel's mean as its gradient
    (scaling by the mean itself shrank the values layer by layer).
    """
    import jax
    import jax.numpy as jnp

    from ib_attention_jax.models.conv import _pad_pairs

    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = _pad_pairs(padding)
    ho = (x.shape[1] + pt + pb - kh) // stride + 1
    wo = (x.shape[2] + pl + pr - kw) // stride + 1
    y = x[:, ::stride, ::stride][:, :ho, :wo]
    y = jnp.pad(y, ((0, 0), (0, ho - y.shape[1]), (0, wo - y.shape[2]), (0, 0)))
    reps = -(-cout // cin)
    y = (jnp.tile(y, (1, 1, 1, reps)) if reps > 1 else y)[..., :cout]
    mean = jnp.mean(kernel)
    return y * (1 + mean - jax.lax.stop_gradient(mean)).astype(y.dtype)


@contextlib.contextmanager
def convolutions_replaced() -> Iterator[None]:
    """Within the block, models built and traced convolve with :func:`_stand_in_conv`."""
    from ib_attention_jax.models import conv

    original = conv.conv2d
    conv.conv2d = _stand_in_conv
    try:
        yield
    finally:
        conv.conv2d = original


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="vgg_aib", choices=AIB_MODELS + PLAIN_MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="train steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "slices", "winograd"))
    args = parser.parse_args(argv)
    cpus = limit_cpus(args.threads)
    rng = np.random.default_rng(1000)
    images = rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    labels = np.arange(args.batch) % 10
    full = JaxBench(args.model, args.batch, "float32", args.conv_impl, 0, images, labels)
    with convolutions_replaced():
        stand_in = JaxBench(args.model, args.batch, "float32", args.conv_impl, 0, images, labels)
    benches = {"full step": full, "convolutions replaced": stand_in}
    for bench in benches.values():
        bench.run(1)
    for _ in range(args.repeats):
        for bench in benches.values():
            bench.runs.append(bench.run(args.steps) / args.steps)
    step_s = {name: statistics.median(b.runs) for name, b in benches.items()}
    conv_s = step_s["full step"] - step_s["convolutions replaced"]
    conv_flops = None
    if full.step_flops and stand_in.step_flops:
        conv_flops = full.step_flops - stand_in.step_flops
    load = os.getloadavg()
    print(f"{args.model}, batch {args.batch}, {args.threads} threads on CPUs {cpus}, load average {load[0]:.2f}")
    print(f"{'part':24s} {'s/step':>7s} {'share':>6s} {'GFLOP':>8s} {'GFLOP/s':>8s}")
    total = step_s["full step"]
    rows = [("whole step", total, full.step_flops), ("convolutions", conv_s, conv_flops),
            ("everything else", step_s["convolutions replaced"], stand_in.step_flops)]
    for name, seconds, flops in rows:
        gflop = None if flops is None else flops / 1e9
        rate = "-" if gflop is None or seconds <= 0 else f"{gflop / seconds:8.1f}"
        print(f"{name:24s} {seconds:7.2f} {100 * seconds / total:5.1f}% "
              f"{'-' if gflop is None else format(gflop, '8.1f'):>8s} {rate:>8s}")
    result = {"model": args.model, "batch": args.batch, "step_s": round(total, 3), "conv_s": round(conv_s, 3),
              "other_s": round(step_s["convolutions replaced"], 3),
              "conv_gflops": None if conv_flops is None or conv_s <= 0 else round(conv_flops / 1e9 / conv_s, 1),
              "runs_s": {n: [round(v, 3) for v in b.runs] for n, b in benches.items()},
              "conv_impl": args.conv_impl, "loadavg": [round(v, 2) for v in load]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from ib_attention_jax import cpu_memory

    cpu_memory.reexec_with_huge_pages("experiments.benchmarks.step_profile", sys.argv[1:])
    main()
