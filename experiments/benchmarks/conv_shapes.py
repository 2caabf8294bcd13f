"""Where a CPU train step spends its time: every convolution shape of vgg_aib / wrn_aib, per implementation.

    .venv/bin/python -m experiments.benchmarks.conv_shapes --models vgg_aib --batch 8
    .venv/bin/python -m experiments.benchmarks.conv_shapes --models wrn_aib --batch 32 --impls auto,xla
    .venv/bin/python -m experiments.benchmarks.conv_shapes --models vgg_aib --batch 8 --whole-model

For each distinct convolution of the models (input size, channels, kernel, stride, how
many times the model has it) it times the forward and the forward + backward (the
gradients of input and kernel, by ``jax.vjp``; ``torch.autograd.grad`` for torch) of
each form in ``--impls``: ``auto`` (the CPU default: Winograd or slices per shape, see
``ib_attention_jax.models.conv.resolve_conv_impl``), ``slices`` (``conv2d_slices``),
``winograd`` (F(2x2, 3x3) where it applies, slices elsewhere), ``xla``
(``lax.conv_general_dilated``) and, with ``torch`` (needs ``make torch``),
``torch.nn.functional.conv2d``; it prints ms and GFLOP/s at the direct convolution's
FLOPs (``2 * b * ho * wo * cout * k * k * cin``, three times that for forward +
backward) and the totals over the model weighted by the layer counts. ``--whole-model``
also times the model's jitted forward (train mode, batch statistics) against forward +
backward (``jax.grad`` of the official loss), both without the optimiser update.

Timings are medians of ``--repeats`` calls after one warm-up call, with ``--threads``
torch threads (the process is pinned to that many CPUs when it may use more). They are
noisy when other jobs share the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from experiments.benchmarks.train_step import limit_cpus

IMPLS = ("auto", "slices", "winograd", "xla", "torch")


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution: (h, w, cin) input, cout, k x k kernel, stride, symmetric padding k // 2."""

    h: int
    cin: int
    cout: int
    k: int = 3
    stride: int = 1

    @property
    def out(self) -> int:
        return (self.h + 2 * (self.k // 2) - self.k) // self.stride + 1

    def flops(self, batch: int) -> float:
        return 2.0 * batch * self.out * self.out * self.cout * self.k * self.k * self.cin

    def label(self) -> str:
        s = f" s{self.stride}" if self.stride > 1 else ""
        return f"{self.h}x{self.h}x{self.cin}->{self.cout} k{self.k}{s}"


def vgg_aib_convs() -> Counter:
    """The LTPA VGG's convolutions (features, attention head, std conv, encoder, dense 1x1)."""
    c: Counter = Counter()
    for cin, cout, n in ((3, 64, 1), (64, 64, 1), (64, 128, 1), (128, 128, 1), (128, 256, 1), (256, 256, 2)):
        c[ConvShape(32, cin, cout)] += n
    c[ConvShape(16, 256, 1)] += 1  # attention mean head
    c[ConvShape(16, 1, 1)] += 1  # std conv
    c[ConvShape(16, 256, 512)] += 1
    c[ConvShape(16, 512, 512)] += 2
    c[ConvShape(8, 512, 512)] += 3
    c[ConvShape(4, 512, 512)] += 1  # block6: a pool after each conv
    c[ConvShape(2, 512, 512)] += 1
    c[ConvShape(1, 512, 512, k=1)] += 1  # the "dense" conv
    return c


def wrn_aib_convs(widen: int = 10, blocks: int = 4, classes: int = 10) -> Counter:
    """WRN-28-10 front and group 3, the ABN branch (a stride-1 group 3 at 16x16) and the std conv."""
    w1, w2, w3 = 16 * widen, 32 * widen, 64 * widen
    c: Counter = Counter()
    c[ConvShape(32, 3, 16)] += 1

    def group(h: int, cin: int, cout: int, stride: int) -> None:
        c[ConvShape(h, cin, cout, 3, stride)] += 1
        c[ConvShape(h, cin, cout, 1, stride)] += 1  # 1x1 shortcut
        c[ConvShape(h // stride, cout, cout)] += 2 * blocks - 1

    group(32, 16, w1, 1)
    group(32, w1, w2, 2)
    group(16, w2, w3, 1)  # att_block3
    group(16, w2, w3, 2)  # block3 (the encoder)
    c[ConvShape(16, w3, classes, k=1)] += 1  # att_conv
    c[ConvShape(16, classes, 1)] += 1  # att_conv3
    c[ConvShape(16, 1, 1)] += 1  # std conv
    return c


MODEL_CONVS: dict[str, Callable[[], Counter]] = {"vgg_aib": vgg_aib_convs, "wrn_aib": wrn_aib_convs}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def time_jax(shape: ConvShape, batch: int, impl: str, repeats: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of one JAX implementation."""
    import jax
    import jax.numpy as jnp

    from ib_attention_jax.models.conv import conv2d

    conv = functools.partial(conv2d, impl=impl)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, shape.h, shape.h, shape.cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((shape.k, shape.k, shape.cin, shape.cout)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.standard_normal((batch, shape.out, shape.out, shape.cout)), jnp.float32)
    f = lambda x, k: conv(x, k, shape.stride, shape.k // 2)  # noqa: E731
    fwd = jax.jit(f)

    def forward_and_backward(x, k, g):
        # The output is returned too: with only the gradients returned, XLA drops the forward
        # of a form whose written-out gradient keeps just the input and kernel (Winograd, slices).
        y, vjp = jax.vjp(f, x, k)
        return y, vjp(g)

    both = jax.jit(forward_and_backward)
    return (median_ms(lambda: jax.block_until_ready(fwd(x, kernel)), repeats),
            median_ms(lambda: jax.block_until_ready(both(x, kernel, g)), repeats))


def time_torch(shape: ConvShape, batch: int, repeats: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of ``torch.nn.functional.conv2d`` (NCHW)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, shape.cin, shape.h, shape.h, generator=gen, requires_grad=True)
    w = (torch.randn(shape.cout, shape.cin, shape.k, shape.k, generator=gen) * 0.05).requires_grad_()
    g = torch.randn(batch, shape.cout, shape.out, shape.out, generator=gen)

    def forward():
        with torch.no_grad():
            return F.conv2d(x, w, stride=shape.stride, padding=shape.k // 2)

    def backward():
        y = F.conv2d(x, w, stride=shape.stride, padding=shape.k // 2)
        return torch.autograd.grad(y, (x, w), g)

    return median_ms(forward, repeats), median_ms(backward, repeats)


def conv_table(models: list[str], batch: int, impls: list[str], repeats: int) -> None:
    counts: Counter = Counter()
    per_model = {m: MODEL_CONVS[m]() for m in models}
    for c in per_model.values():
        counts.update(c)
    header = f"{'convolution (HxWxCin->Cout)':28s} " + " ".join(f"{m[:7]:>7s}" for m in models) + f" {'GFLOP':>7s}"
    for impl in impls:
        header += f" | {impl[:6] + ' fwd':>11s} {'GF/s':>5s} {impl[:6] + ' f+b':>11s} {'GF/s':>5s}"
    print(header)
    totals = {(m, impl, kind): 0.0 for m in models for impl in impls for kind in ("fwd", "bwd")}
    for shape in sorted(counts, key=lambda s: -s.flops(batch) * counts[s]):
        gflop = shape.flops(batch) / 1e9
        line = f"{shape.label():28s} " + " ".join(f"{per_model[m][shape]:7d}" for m in models) + f" {gflop:7.2f}"
        for impl in impls:
            fwd, bwd = time_torch(shape, batch, repeats) if impl == "torch" else time_jax(shape, batch, impl, repeats)
            line += f" | {fwd:9.1f}ms {gflop / fwd * 1e3:5.0f} {bwd:9.1f}ms {3 * gflop / bwd * 1e3:5.0f}"
            for m in models:
                totals[(m, impl, "fwd")] += per_model[m][shape] * fwd
                totals[(m, impl, "bwd")] += per_model[m][shape] * bwd
        print(line, flush=True)
    print()
    for m in models:
        gflop = sum(n * s.flops(batch) for s, n in per_model[m].items()) / 1e9
        parts = [f"{impl}: fwd {totals[(m, impl, 'fwd')] / 1e3:.2f} s ({gflop / totals[(m, impl, 'fwd')] * 1e3:.0f} "
                 f"GF/s), f+b {totals[(m, impl, 'bwd')] / 1e3:.2f} s "
                 f"({3 * gflop / totals[(m, impl, 'bwd')] * 1e3:.0f} GF/s)" for impl in impls]
        print(f"{m}: all convolutions at batch {batch}, {gflop:.1f} GFLOP forward; " + "; ".join(parts))


def whole_model(name: str, batch: int, repeats: int) -> None:
    """The model's jitted forward (train mode) against forward + backward of the official loss."""
    import jax
    import jax.numpy as jnp

    from ib_attention_jax import create_model
    from ib_attention_jax.objectives import aib_loss, official_objective

    model = create_model(name, 10)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))(
        jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 32, 32, 3)), jnp.float32)
    labels = jnp.arange(batch) % 10
    rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(("attention", "latent", "dropout"))}
    objective = official_objective(name)

    def loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                             rngs=rngs, mutable=["batch_stats"])
        return aib_loss(out, labels, objective)[0]

    fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss))
    f_ms = median_ms(lambda: jax.block_until_ready(fwd(variables["params"])), repeats)
    g_ms = median_ms(lambda: jax.block_until_ready(grad(variables["params"])), repeats)
    print(f"{name} batch {batch}: forward {f_ms / 1e3:.2f} s ({batch / f_ms * 1e3:.2f} img/s), forward + backward "
          f"{g_ms / 1e3:.2f} s ({batch / g_ms * 1e3:.2f} img/s), backward / forward = {(g_ms - f_ms) / f_ms:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default="vgg_aib", help=f"comma-separated, of {', '.join(MODEL_CONVS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--impls", default="slices,winograd,torch", help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--whole-model", action="store_true", help="also time forward vs forward + backward")
    args = parser.parse_args(argv)
    models, impls = args.models.split(","), args.impls.split(",")
    if bad := [m for m in models if m not in MODEL_CONVS] + [i for i in impls if i not in IMPLS]:
        parser.error(f"unknown model or implementation: {bad}")
    limit_cpus(args.threads)
    if "torch" in impls:
        import torch

        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"batch {args.batch}, {args.threads} threads, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    if args.whole_model:
        for m in models:
            whole_model(m, args.batch, args.repeats)
        print()
    conv_table(models, args.batch, impls, args.repeats)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


if __name__ == "__main__":
    main()
