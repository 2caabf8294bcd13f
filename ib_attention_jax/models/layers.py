"""Small layers shared by the model families: initialisers, PyTorch-style BatchNorm, pooling."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ib_attention_jax.models import backend

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
_ZEROS = nn.initializers.zeros_init()


def at_least_float32(x: Array) -> Array:
    """``x`` in float32, or in its own dtype where that is wider (float64 under ``jax_enable_x64``).

    Where a bfloat16 model keeps a quantity in float32 (attention mean, latent, losses),
    this keeps a float64 run in float64 instead of rounding it to float32.
    """
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last, with PyTorch's ``BatchNorm2d`` training semantics.

    In training (``use_running_average=False``) it normalises with the batch mean and
    the biased batch variance, and updates the running statistics as PyTorch does:
    ``mean <- (1 - momentum) * mean + momentum * batch_mean`` and
    ``var <- (1 - momentum) * var + momentum * batch_var * n / (n - 1)`` (the UNBIASED
    variance; n = values per channel in the global batch; n = 1 is a ValueError, as in
    PyTorch), and counts the update in ``num_batches_tracked`` (int32; exported as
    PyTorch's int64 counter). Flax's own
    BatchNorm puts the biased variance in the running update, which makes every
    running variance n/(n-1) too small (6.7% of the update at n = 16).

    With ``axis_name`` the statistics are those of the global batch over that mapped
    axis (shard_map/pmap): the mean, then the variance around it, each a ``pmean`` of
    equally sized per-device parts, so any number of devices computes what one device
    computes on the whole batch. Statistics are computed in at least float32 (a
    bfloat16 model keeps float32 statistics; float64 stays float64) with two passes
    (a mean, then the deviations from it: :func:`batch_moments`), not as ``E[x^2] - E[x]^2``.
    Running statistics keep their stored dtype. Variables: ``params/scale``,
    ``params/bias``, ``batch_stats/mean``, ``batch_stats/var``, ``batch_stats/num_batches_tracked``.
    """

    use_running_average: bool = False
    axis_name: str | None = None
    momentum: float = 0.1  # PyTorch's convention: the weight of the new batch statistic
    epsilon: float = 1e-5
    dtype: Any = None  # output dtype; None: of the input and parameters
    param_dtype: Any = jnp.float32
    scale_init: Any = _ONES
    bias_init: Any = _ZEROS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axis_name = None if self.is_initializing() else self.axis_name
            mean, var, n = batch_moments(x, axes, axis_name)
            if not self.is_initializing():
                if n < 2:
                    raise ValueError(f"BatchNorm in training needs more than one value per channel, got input "
                                     f"{x.shape} ({n} value(s) per channel in the global batch); use a larger "
                                     "batch or train=False")
                m = self.momentum
                ra_mean.value = ((1.0 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
                ra_var.value = ((1.0 - m) * ra_var.value + m * (var * (n / (n - 1)))).astype(ra_var.value.dtype)
                count.value = count.value + 1
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        y = (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


def batch_moments(x: Array, axes: tuple[int, ...], axis_name: str | None = None) -> tuple[Array, Array, int]:
    """(mean, biased variance, n) per channel over ``axes`` and, with ``axis_name``, over the devices.

    The corrected two-pass algorithm (Chan, Golub and LeVeque) in at least float32: a first mean
    ``m0``, then in one pass over ``d = x - m0`` both ``mean(d)``, which corrects the mean, and
    ``mean(d**2) - mean(d)**2``, the variance; every mean taken :func:`mean_axis_by_axis`. The mean
    comes out within about half an ulp and the variance within a few. A statistic's error is the
    same for every pixel of the channel: PyTorch accumulates them in float64 on CPU, and single
    float32 reductions (up to 16 ulp off in the one-channel attention BatchNorm of ``wrn_aib_qt``)
    failed its float32 train-step parity. ``m0`` carries no gradient: the mean's gradient is 1/n
    and the variance's ``2 (x - mean) / n``, as for the plain formulas. n is the global number of
    values per channel.
    """
    x = at_least_float32(x)
    devices = 1 if axis_name is None else lax.axis_size(axis_name)
    n = math.prod(x.shape[a] for a in axes) * devices
    first_mean = mean_axis_by_axis(x, axes)
    if axis_name is not None:
        first_mean = lax.pmean(first_mean, axis_name)
    first_mean = lax.stop_gradient(first_mean)
    deviation = x - first_mean
    correction = mean_axis_by_axis(deviation, axes)
    mean_square = mean_axis_by_axis(jnp.square(deviation), axes)
    if axis_name is not None:
        correction, mean_square = lax.pmean((correction, mean_square), axis_name)
    var = jnp.maximum(mean_square - jnp.square(correction), 0.0)
    return first_mean + correction, var, n


def mean_axis_by_axis(x: Array, axes: tuple[int, ...]) -> Array:
    """The mean over ``axes`` as one mean per axis, innermost first: (b, h, w, c) -> (b, h, c) -> (b, c) -> (c,).

    Each sum is at most one axis long. The float32 error of a sum grows with the number of terms
    added in sequence, and XLA's CPU reductions of a few thousand values per channel add them in
    sequence: the mean of squares over (2, 32, 32, 1) was 12 ulp off as one reduction and 1 ulp axis
    by axis (over 16 of the models' shapes, 3.4 ulp at worst axis by axis, 12 as one reduction).
    """
    for axis in sorted(axes, reverse=True):
        x = jnp.mean(x, axis)
    return x


def batch_norm(train: bool, axis_name: str | None = None, dtype: Any = None, name: str | None = None,
               scale_init=_ONES) -> BatchNorm:
    """The models' BatchNorm: PyTorch's numbers (momentum 0.1, eps 1e-5) and running-statistics update.

    ``axis_name`` makes the batch statistics those of the global batch in a pmap-style step.
    """
    return BatchNorm(use_running_average=not train, axis_name=axis_name if train else None, dtype=dtype,
                     scale_init=scale_init, name=name)


class BackboneModule(nn.Module):
    """Base of the backbones' layers: the settings every layer hands down, keyword-only.

    ``conv_impl`` (see :func:`ib_attention_jax.models.conv.resolve_conv_impl`), the BatchNorm
    ``bn_axis_name`` of a pmap-style step and the compute ``dtype`` (None: the input's).
    """

    _: dataclasses.KW_ONLY
    conv_impl: str = "auto"
    bn_axis_name: str | None = None
    dtype: Any = None

    @property
    def settings(self) -> dict[str, Any]:
        """The keywords that hand these settings to a sub-module."""
        return dict(conv_impl=self.conv_impl, bn_axis_name=self.bn_axis_name, dtype=self.dtype)

    @nn.nowrap
    def batch_norm(self, train: bool, name: str, **kwargs: Any) -> BatchNorm:
        """The models' BatchNorm (:func:`batch_norm`) with this layer's axis name and dtype."""
        return batch_norm(train, self.bn_axis_name, self.dtype, name=name, **kwargs)


def max_pool(x: Array, window: int = 2, stride: int | None = None, padding: int = 0) -> Array:
    """NHWC max-pool with symmetric padding (PyTorch ``MaxPool2d``).

    On CPU (:func:`ib_attention_jax.models.backend.on_cpu`, the rule of the convolutions' ``"auto"``),
    non-overlapping windows that tile the map (VGG's 2x2 pools) go through :func:`tiled_max_pool`;
    other pools, and every pool on GPU/TPU, through ``lax.reduce_window``.
    """
    stride = window if stride is None else stride
    _, h, w, _ = x.shape
    tiles = stride == window and padding == 0 and h % window == 0 and w % window == 0 and window <= 8  # int8 positions
    if tiles and backend.on_cpu():
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
