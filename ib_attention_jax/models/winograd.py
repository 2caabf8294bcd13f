"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 block of outputs is computed from a 4x4 tile of the input as
``A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, 2016): the 16 products per tile and
channel pair replace the 36 of a direct 3x3 convolution, so the one batched matrix
multiply that does the work has 2.25x fewer FLOPs than the ``kh*kw`` patch matrix of
the slices form. The input and output transforms are additions only, and ``G`` holds
halves, so in float32 the result stays within about 2e-6 (relative to the largest
output) of a direct convolution. Gradients come from differentiating this form: both
are again 16 batched matrix multiplies of the same size.

Why here: on CPU the train step of the wide models spends over 90% of its time in 3x3
stride-1 convolutions, and the matmul is already near the machine's peak, so fewer
FLOPs is the remaining lever.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

# Kernel transform G (4x3); the input (B^T) and output (A^T) transforms are written out as additions below.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def _input_transform(d0: Array, d1: Array, d2: Array, d3: Array) -> list[Array]:
    """Rows of ``B^T d`` from the four rows d0..d3 of a tile: B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]."""
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _output_transform(m0: Array, m1: Array, m2: Array, m3: Array) -> list[Array]:
    """Rows of ``A^T m`` from the four rows of a product tile: A^T = [[1,1,1,0],[0,1,-1,-1]]."""
    return [m0 + m1 + m2, m1 - m2 - m3]


def _tile_rows(x: Array, axis: int, tiles: int) -> list[Array]:
    """The four overlapping row sets of ``tiles`` 4-row tiles at stride 2 along ``axis``.

    ``x`` has ``2 * tiles + 2`` entries along ``axis``; splitting it into even and odd
    rows turns the stride-2 tiling into contiguous slices.
    """
    shape = x.shape
    pairs = x.reshape(*shape[:axis], tiles + 1, 2, *shape[axis + 1:])
    even = lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
    odd = lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
    first = lax.slice_in_dim(even, 0, tiles, axis=axis), lax.slice_in_dim(odd, 0, tiles, axis=axis)
    second = lax.slice_in_dim(even, 1, tiles + 1, axis=axis), lax.slice_in_dim(odd, 1, tiles + 1, axis=axis)
    return [first[0], first[1], second[0], second[1]]


def winograd_kernel(kernel: Array) -> Array:
    """``G g G^T`` for every channel pair: (3, 3, cin, cout) -> (16, cin, cout)."""
    g = jnp.asarray(_G, kernel.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", g, kernel, g)
    return u.reshape(16, *kernel.shape[2:])


def conv2d_winograd(x: Array, kernel: Array, padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
                    ) -> Array:
    """NHWC x HWIO 3x3 stride-1 convolution (cross-correlation, as in PyTorch) with F(2x2, 3x3).

    ``padding`` is ((top, bottom), (left, right)). Odd output sizes are computed on one
    extra row/column of zeros and cropped.
    """
    kh, kw, cin, cout = kernel.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"conv2d_winograd computes 3x3 kernels only, got {kh}x{kw}; use conv2d_slices")
    b, h, w, c = x.shape
    if c != cin:
        raise ValueError(f"input has {c} channels but the kernel expects {cin}")
    (pt, pb), (pl, pr) = padding
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"a 3x3 kernel does not fit a padded {h + pt + pb}x{w + pl + pr} map")
    th, tw = -(-ho // 2), -(-wo // 2)  # tiles per column / row
    x = jnp.pad(x, ((0, 0), (pt, 2 * th + 2 - h - pt), (pl, 2 * tw + 2 - w - pl), (0, 0)))  # (b, 2th+2, 2tw+2, c)

    rows = _input_transform(*_tile_rows(x, 1, th))  # 4 x (b, th, 2tw+2, c)
    tiles = [v for r in rows for v in _input_transform(*_tile_rows(r, 2, tw))]  # 16 x (b, th, tw, c)
    v = jnp.stack(tiles).reshape(16, b * th * tw, c)

    m = lax.dot_general(v, winograd_kernel(kernel), (((2,), (1,)), ((0,), (0,))))  # (16, b*th*tw, cout)
    m = m.reshape(4, 4, b, th, tw, cout)

    out_rows = _output_transform(m[0], m[1], m[2], m[3])  # 2 x (4, b, th, tw, cout)
    out = [_output_transform(r[0], r[1], r[2], r[3]) for r in out_rows]  # [row][col] (b, th, tw, cout)
    y = jnp.stack([jnp.stack(cols, axis=3) for cols in out], axis=2)  # (b, th, 2, tw, 2, cout)
    y = y.reshape(b, 2 * th, 2 * tw, cout)
    return y[:, :ho, :wo]  # drops the extra row/column of odd sizes
