"""The project's convolution layer: one set of parameters, a per-backend implementation.

Every model in the library convolves through :class:`Conv`. On GPU and TPU it calls
XLA's convolution. On CPU, where XLA's convolution measured about 5x slower than
PyTorch's, it writes the convolution as ``k*k`` shifted slices concatenated along
channels followed by one matrix multiply (the ``"slices"`` form), which ran at parity.
Both forms compute the same function of the same ``kernel``/``bias`` parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

CONV_IMPLS = ("auto", "xla", "slices")


def resolve_conv_impl(impl: str) -> str:
    """Maps ``"auto"`` to the fastest form for the default backend."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "slices" if jax.default_backend() == "cpu" else "xla"
    return impl


def _pad_pairs(padding: int | Sequence[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (a, b), (c, d) = padding
    return ((int(a), int(b)), (int(c), int(d)))


def conv2d_xla(x: Array, kernel: Array, stride: int = 1, padding: int | Sequence = 0) -> Array:
    """NHWC x HWIO convolution by ``lax.conv_general_dilated``."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=_pad_pairs(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def conv2d_slices(x: Array, kernel: Array, stride: int = 1, padding: int | Sequence = 0) -> Array:
    """NHWC x HWIO convolution as ``kh*kw`` strided slices, one concat and one matmul.

    The patch channels are ordered (kh, kw, cin), the row-major order of an HWIO
    kernel, so the kernel reshapes to ``(kh*kw*cin, cout)`` without a transpose.
    """
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = _pad_pairs(padding)
    if pt or pb or pl or pr:
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    b, h, w, c = x.shape
    if c != cin:
        raise ValueError(f"input has {c} channels but the kernel expects {cin}")
    ho = (h - kh) // stride + 1
    wo = (w - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit a padded {h}x{w} map")
    cols = [
        lax.slice(x, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                  (1, stride, stride, 1))
        for i in range(kh) for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # (b, ho, wo, kh*kw*cin)
    out = jnp.dot(patches.reshape(b * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return out.reshape(b, ho, wo, cout)


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: int | Sequence = 0,
           impl: str = "auto") -> Array:
    """Functional convolution with the implementation chosen by ``impl``."""
    if resolve_conv_impl(impl) == "xla":
        return conv2d_xla(x, kernel, stride, padding)
    return conv2d_slices(x, kernel, stride, padding)


class Conv(nn.Module):
    """Square 2D convolution (NHWC, HWIO kernel) shared by every model.

    ``padding`` defaults to ``kernel_size // 2`` (PyTorch's ``padding=1`` for 3x3 and
    0 for 1x1), symmetric, which is what the official models use, including on
    stride-2 convolutions (where Flax's ``'SAME'`` would pad asymmetrically).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int | None = None
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        pad = k // 2 if self.padding is None else self.padding
        y = conv2d(x, kernel, self.stride, pad, self.impl)
        if bias is not None:
            y = y + bias
        return y
