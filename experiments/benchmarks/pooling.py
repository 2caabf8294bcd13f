"""The 2x2 max-pool of vgg_aib on CPU: ``lax.reduce_window`` against the tiled form, forward and gradient.

    .venv/bin/python -m experiments.benchmarks.pooling --batch 32

For each pooled map of vgg_aib (NHWC, float32, values after a ReLU) it times the jitted
forward and forward + input gradient (``jax.vjp``) of ``reduce_window`` (whose gradient
XLA computes by select-and-scatter) and of ``models.layers.tiled_max_pool``: medians of
``--repeats`` calls after a warm-up call, on ``--threads`` CPUs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from experiments.benchmarks.conv_shapes import median_ms
from experiments.benchmarks.train_step import limit_cpus

VGG_POOLED_MAPS = ((32, 256), (16, 512), (8, 512), (4, 512), (2, 512))  # (size, channels) of each pool's input


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    limit_cpus(args.threads)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from ib_attention_jax.models.layers import tiled_max_pool

    forms = {"reduce_window": lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
             "tiled": lambda x: tiled_max_pool(x, 2)}
    print(f"batch {args.batch}, {args.threads} threads; ms per call (forward | forward + gradient)")
    totals = dict.fromkeys(forms, 0.0)
    for size, channels in VGG_POOLED_MAPS:
        rng = np.random.default_rng(size)
        x = jnp.asarray(np.maximum(rng.standard_normal((args.batch, size, size, channels)), 0), jnp.float32)
        g = jnp.ones((args.batch, size // 2, size // 2, channels), jnp.float32)
        cells = []
        for name, pool in forms.items():
            fwd = jax.jit(pool)
            grad = jax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g)[0])
            f_ms = median_ms(lambda f=fwd, x=x: jax.block_until_ready(f(x)), args.repeats)
            g_ms = median_ms(lambda f=grad, x=x, g=g: jax.block_until_ready(f(x, g)), args.repeats)
            totals[name] += g_ms
            cells.append(f"{name} {f_ms:6.1f} | {g_ms:6.1f}")
        print(f"{size:2d}x{size:<2d}x{channels}: " + "   ".join(cells), flush=True)
    print("all pools, forward + gradient: " + ", ".join(f"{n} {t:.1f} ms" for n, t in totals.items())
          + f" (ratio {totals['reduce_window'] / totals['tiled']:.1f}x)")


if __name__ == "__main__":
    sys.exit(main())
