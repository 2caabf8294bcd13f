"""The project's convolution layer: one set of parameters, a per-backend implementation.

Every model in the library convolves through :class:`Conv`. On GPU and TPU it calls
XLA's convolution. On CPU, where XLA's convolution measured about 5x slower than
PyTorch's, it writes the convolution as ``k*k`` shifted slices concatenated along
channels followed by one matrix multiply (the ``"slices"`` form), which ran at parity,
and 3x3 stride-1 float32 convolutions with enough channels by Winograd's F(2x2, 3x3)
(``"winograd"``, 2.25x fewer FLOPs; see :mod:`ib_attention_jax.models.winograd`), except
those with a wide input and a narrow output (the one-channel map heads), which XLA's
convolution computes fastest.
All forms compute the same function of the same ``kernel``/``bias`` parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ib_attention_jax.models import backend
from ib_attention_jax.models.winograd import after, conv2d_winograd

Array = jax.Array
Initializer = Callable[..., Array]

CONV_IMPLS = ("auto", "xla", "slices", "winograd")

# "auto" on CPU takes Winograd for 3x3 stride-1 float32 convolutions with at least this
# many input channels on maps at least this large; on fewer channels (3, 16) or on 4x4
# and 2x2 maps the transforms cost more than the FLOPs they save and slices win
# (experiments/benchmarks/conv_shapes.py at batch 32: 32x32x16->160 forward + backward
# 30 ms slices vs 156 ms Winograd, 4x4x512->512 41 vs 103 ms, 8x8x640->640 251 vs 191 ms).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_MAP = 8
# Below this many output channels (the attention maps' one-channel 3x3 heads) Winograd's
# input tiles cost far more than its few products save, and XLA's own convolution is the
# fastest form for a wide input (conv_shapes.py-style timing at batch 32, forward + backward,
# ms, Winograd / XLA: 16x16x256->1 18.0 / 6.2, 32x32x256->4 89 / 42, ->16 96 / 78,
# ->32 104 / 193). Narrow outputs of narrow inputs (16x16x10->1) stay with slices.
WINOGRAD_MIN_OUT_CHANNELS = 32


def winograd_applies(kernel_shape: Sequence[int], stride: int) -> bool:
    """Whether F(2x2, 3x3) can compute this convolution: a 3x3 kernel at stride 1."""
    return tuple(kernel_shape[:2]) == (3, 3) and stride == 1


def resolve_conv_impl(impl: str, kernel_shape: Sequence[int] | None = None, stride: int = 1,
                      dtype: Any = jnp.float32, map_size: int | None = None) -> str:
    """The form that computes one convolution: ``"xla"``, ``"slices"`` or ``"winograd"``.

    ``"auto"`` means XLA's convolution on GPU/TPU and, on CPU, Winograd where it applies
    to a float32 convolution with at least ``WINOGRAD_MIN_CHANNELS`` input and
    ``WINOGRAD_MIN_OUT_CHANNELS`` output channels on an input map whose smaller side
    (``map_size``) is at least ``WINOGRAD_MIN_MAP``, XLA's convolution where only the
    output is narrower than that, and slices elsewhere. ``"winograd"`` falls back to slices
    for the convolutions it cannot compute (1x1, strided, other kernel sizes). Without
    ``kernel_shape`` the answer is the backend's general form (``"slices"`` on CPU).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        if not backend.on_cpu():
            return "xla"
        worthwhile = (kernel_shape is not None and kernel_shape[2] >= WINOGRAD_MIN_CHANNELS
                      and map_size is not None and map_size >= WINOGRAD_MIN_MAP
                      and jnp.dtype(dtype) == jnp.float32)
        if not worthwhile or not winograd_applies(kernel_shape, stride):
            return "slices"
        # a wide input to a narrow output (a one-channel map head) goes to XLA's convolution
        return "xla" if kernel_shape[3] < WINOGRAD_MIN_OUT_CHANNELS else "winograd"
    if impl == "winograd" and (kernel_shape is None or not winograd_applies(kernel_shape, stride)):
        return "slices"
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


def _slices_geometry(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int,
                     pads: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int]:
    """Output rows and columns of the slices form; clear errors for a channel mismatch or a kernel that does not fit."""
    kh, kw, cin, _ = kernel_shape
    (pt, pb), (pl, pr) = pads
    _, h, w, c = x_shape
    if c != cin:
        raise ValueError(f"input has {c} channels but the kernel expects {cin}")
    h, w = h + pt + pb, w + pl + pr
    ho = (h - kh) // stride + 1
    wo = (w - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit a padded {h}x{w} map")
    return ho, wo


def _patches(x: Array, kernel_shape: tuple[int, ...], stride: int,
             pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """The ``kh*kw`` strided slices of the padded input, concatenated: (b, ho, wo, kh*kw*cin), order (kh, kw, cin)."""
    kh, kw, _, _ = kernel_shape
    ho, wo = _slices_geometry(x.shape, kernel_shape, stride, pads)
    (pt, pb), (pl, pr) = pads
    if pt or pb or pl or pr:
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    b, _, _, c = x.shape
    cols = [
        lax.slice(x, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                  (1, stride, stride, 1))
        for i in range(kh) for j in range(kw)
    ]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _slices_forward(x: Array, kernel: Array, stride: int, pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    kh, kw, cin, cout = kernel.shape
    patches = _patches(x, kernel.shape, stride, pads)  # (b, ho, wo, kh*kw*cin)
    b, ho, wo, _ = patches.shape
    out = jnp.dot(patches.reshape(b * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return out.reshape(b, ho, wo, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _slices_lean(x: Array, kernel: Array, stride: int, pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    return _slices_forward(x, kernel, stride, pads)


def _slices_lean_fwd(x: Array, kernel: Array, stride: int, pads: tuple[tuple[int, int], tuple[int, int]]
                     ) -> tuple[Array, tuple[Array, Array]]:
    return _slices_forward(x, kernel, stride, pads), (x, kernel)  # keeps the input, not its kh*kw x larger patches


def _slices_lean_bwd(stride: int, pads: tuple[tuple[int, int], tuple[int, int]], residuals: tuple[Array, Array],
                     dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    b, ho, wo, _ = dy.shape
    # The input gradient is linear in dy and needs only the kernel: the transpose of x -> conv(x, kernel).
    (dx,) = jax.linear_transpose(lambda x_: _slices_forward(x_, kernel, stride, pads), x)(dy)
    # The kernel gradient rebuilds the patches from the input once dy exists (after(): not during the forward pass).
    patches = _patches(after(x, dy), kernel.shape, stride, pads).reshape(b * ho * wo, kh * kw * cin)
    dk = lax.dot_general(patches, dy.reshape(b * ho * wo, cout), (((0,), (0,)), ((), ())))  # (kh*kw*cin, cout)
    return dx, dk.reshape(kernel.shape)


_slices_lean.defvjp(_slices_lean_fwd, _slices_lean_bwd)


def conv2d_slices(x: Array, kernel: Array, stride: int = 1, padding: int | Sequence = 0) -> Array:
    """NHWC x HWIO convolution as ``kh*kw`` strided slices, one concat and one matmul.

    The patch channels are ordered (kh, kw, cin), the row-major order of an HWIO
    kernel, so the kernel reshapes to ``(kh*kw*cin, cout)`` without a transpose. For
    kernels larger than 1x1 the gradient is written out (``jax.custom_vjp``) so the
    backward pass keeps the input rather than its ``kh*kw`` times larger patch matrix:
    the kernel gradient rebuilds the patches when the output gradient exists, the input
    gradient is the transpose of the (linear) convolution.
    """
    pads = _pad_pairs(padding)
    _slices_geometry(x.shape, kernel.shape, stride, pads)  # clear errors before tracing a gradient
    if kernel.shape[0] * kernel.shape[1] == 1:
        return _slices_forward(x, kernel, stride, pads)  # the patches are the (strided) input itself
    return _slices_lean(x, kernel, stride, pads)


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: int | Sequence = 0,
           impl: str = "auto") -> Array:
    """Functional convolution with the implementation chosen by ``impl`` (see :func:`resolve_conv_impl`)."""
    form = resolve_conv_impl(impl, kernel.shape, stride, x.dtype, min(x.shape[1], x.shape[2]))
    if form == "xla":
        return conv2d_xla(x, kernel, stride, padding)
    if form == "winograd":
        return conv2d_winograd(x, kernel, _pad_pairs(padding))
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
