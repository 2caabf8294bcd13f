"""BatchNorm training steps on 1 and on N simulated CPU devices (``tests/test_batch_norm.py``).

A Dense layer (no bias) feeds the project's BatchNorm; the loss of a device is the mean
over its rows of ``sum_c y * g``. Two steps on two global batches, each under
``jax.shard_map`` over a 1-D ``data`` mesh with BatchNorm's ``axis_name="data"``: the
gradients are ``pmean``-ed as the train step does. Writes the inputs and, per run
(``<dtype>:<devices>``), the outputs, gradients and batch_stats after each step to an npz;
the test compares them with its numpy PyTorch-semantics reference.

    python tests/helpers/batch_norm_devices.py --num-devices 8 --out results.npz
"""

from __future__ import annotations

import argparse

from cpu_setup import configure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-devices", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    configure(args.num_devices)

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 runs beside the float32 ones; explicit dtypes everywhere
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from ib_attention_jax.models.layers import BatchNorm

    batch, hw, cin, channels, steps = 8, 2, 3, 5, 2
    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((steps, batch, hw, hw, cin)) * 2.0 + 1.5,  # offset: the mean matters
        "g": rng.standard_normal((steps, batch, hw, hw, channels)),
        "kernel": rng.standard_normal((cin, channels)),
        "scale": 1.0 + 0.1 * rng.standard_normal(channels),
        "bias": 0.1 * rng.standard_normal(channels),
        "running_mean": 0.1 * rng.standard_normal(channels),
        "running_var": 1.0 + 0.5 * rng.uniform(size=channels),
    }
    out = {f"input|{k}": v for k, v in inputs.items()}
    bn = BatchNorm(axis_name="data")

    def step(params, stats, x, g):
        def loss(params):
            h = x @ params["kernel"]
            y, mutated = bn.apply({"params": params["bn"], "batch_stats": stats}, h, mutable=["batch_stats"])
            return jnp.mean(jnp.sum(y * g, axis=-1)), (y, mutated["batch_stats"])

        grads, (y, new_stats) = jax.grad(loss, has_aux=True)(params)
        return y, lax.pmean(grads, "data"), new_stats

    for dtype in (np.float32, np.float64):
        for n in sorted({1, args.num_devices}):
            mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
            run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                                        out_specs=(P("data"), P(), P()), check_vma=False))
            cast = lambda name, dtype=dtype: jnp.asarray(inputs[name], dtype)  # noqa: E731
            params = {"kernel": cast("kernel"), "bn": {"scale": cast("scale"), "bias": cast("bias")}}
            stats = {"mean": cast("running_mean"), "var": cast("running_var"),
                     "num_batches_tracked": jnp.zeros((), jnp.int32)}
            label = f"{np.dtype(dtype).name}:{n}"
            for s in range(steps):
                x, g = (jnp.asarray(inputs[k][s], dtype) for k in ("x", "g"))
                y, grads, stats = run(params, stats, x, g)
                out[f"{label}|{s}|y"] = np.asarray(y)
                out[f"{label}|{s}|grad_kernel"] = np.asarray(grads["kernel"])
                out[f"{label}|{s}|grad_scale"] = np.asarray(grads["bn"]["scale"])
                out[f"{label}|{s}|grad_bias"] = np.asarray(grads["bn"]["bias"])
                for name, value in stats.items():
                    out[f"{label}|{s}|{name}"] = np.asarray(value)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
