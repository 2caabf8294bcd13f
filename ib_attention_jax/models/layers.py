"""Small layers shared by the model families: initialisers, BatchNorm, Dense, pooling."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# PyTorch's defaults and the official initialisers, as Flax initialisers.
xavier_uniform_relu = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")  # gain sqrt(2)
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def torch_default_bias(fan_in: int):
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def uniform_01(key, shape, dtype=jnp.float32):
    """U(0, 1): the LTPA initialiser of BatchNorm scales in the official VGG."""
    return jax.random.uniform(key, shape, dtype)


_ONES = nn.initializers.ones_init()


def batch_norm(train: bool, axis_name: str | None = None, dtype: Any = None, name: str | None = None,
               scale_init=_ONES) -> nn.BatchNorm:
    """BatchNorm with PyTorch's numbers: momentum 0.1 (Flax 0.9), eps 1e-5.

    ``axis_name`` makes the batch statistics a mean over devices in a pmap-style step.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name if train else None, dtype=dtype,
                        scale_init=scale_init, name=name)


def max_pool(x: Array, window: int = 2, stride: int | None = None, padding: int = 0) -> Array:
    """NHWC max-pool with symmetric padding (PyTorch ``MaxPool2d``).

    Non-overlapping windows that tile the map (VGG's 2x2 pools) go through
    :func:`tiled_max_pool`; other pools through ``lax.reduce_window``.
    """
    stride = window if stride is None else stride
    _, h, w, _ = x.shape
    if stride == window and padding == 0 and h % window == 0 and w % window == 0 and window <= 8:  # int8 positions
        return tiled_max_pool(x, window)
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def _windows(x: Array, window: int) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // window, window, w // window, window, c)


def _first_max(x: Array, window: int) -> tuple[Array, Array]:
    """(max, row-major position of its first occurrence) of each tile, like PyTorch's MaxPool2d.

    One select chain over the tile's positions computes both, so the position never
    depends on comparing values that XLA may recompute in another fusion (a last-bit
    difference there would drop the tile's gradient). NaN wins, as in PyTorch.
    """
    tiles = _windows(x, window)  # (b, h/window, window, w/window, window, c)
    best, first = tiles[:, :, 0, :, 0], jnp.zeros(tiles[:, :, 0, :, 0].shape, jnp.int8)
    for k in range(1, window * window):
        value = tiles[:, :, k // window, :, k % window]
        take = (value > best) | jnp.isnan(value)
        best, first = jnp.where(take, value, best), jnp.where(take, jnp.int8(k), first)
    return best, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tiled_max_pool(x: Array, window: int) -> Array:
    """Max over non-overlapping ``window`` x ``window`` tiles of an NHWC map.

    The gradient goes to the first maximum of each tile in row-major order, as in
    PyTorch and ``lax.reduce_window``, but by one elementwise pass over a saved int8
    position per output: with XLA's CPU select-and-scatter (the gradient of
    ``reduce_window``) VGG's pools ran 11x slower (``experiments/benchmarks/pooling.py``).
    """
    return _first_max(x, window)[0]


def _tile_positions(window: int) -> Array:
    """Row-major position of each tile element, shaped to broadcast against ``_windows``."""
    return jnp.arange(window * window, dtype=jnp.int8).reshape(1, 1, window, 1, window, 1)


def _tiled_max_pool_fwd(x: Array, window: int):
    return _first_max(x, window)


def _tiled_max_pool_bwd(window: int, first: Array, out_grad: Array):
    b, ho, wo, c = out_grad.shape
    grad = jnp.where(first[:, :, None, :, None] == _tile_positions(window), out_grad[:, :, None, :, None],
                     jnp.zeros((), out_grad.dtype))
    return (grad.reshape(b, ho * window, wo * window, c),)


tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def adaptive_avg_pool(x: Array, out_hw: int) -> Array:
    """PyTorch ``AdaptiveAvgPool2d`` (NHWC): bins [floor(i*H/o), ceil((i+1)*H/o)), may overlap."""
    _, h, w, _ = x.shape

    def bins(n: int) -> list[tuple[int, int]]:
        return [((i * n) // out_hw, -((-(i + 1) * n) // out_hw)) for i in range(out_hw)]

    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h)]  # each (b, w, c)
    x = jnp.stack(rows, axis=1)  # (b, o, w, c)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w)]
    return jnp.stack(cols, axis=2)  # (b, o, o, c)
