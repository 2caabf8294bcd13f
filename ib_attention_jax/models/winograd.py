"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), with a memory-lean gradient.

Each 2x2 block of outputs is computed from a 4x4 tile of the input as
``A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, 2016): the 16 products per tile and
channel pair replace the 36 of a direct 3x3 convolution, so the one batched matrix
multiply that does the work has 2.25x fewer FLOPs than the ``kh*kw`` patch matrix of
the slices form. The input and output transforms are additions only, and ``G`` holds
halves, so in float32 the result stays within about 2e-6 (relative to the largest
output) of a direct convolution.

The gradient is written out (``jax.custom_vjp``) so that the backward pass keeps only
the layer's input and kernel. Differentiating the forward form kept its transformed
input tiles, 4x the input's size, and the transformed kernel for every layer until the
backward pass reached it. Instead the backward pass transforms the output gradient once,
``dm = A dy A^T`` per tile, and from it computes, with 16 batched matrix multiplies each
of the forward's size:

* the input gradient ``B [dm U^T] B^T``, summed back over the overlapping tiles;
* the kernel gradient ``G^T [sum over tiles (B^T d B)^T dm] G``, with the input tiles
  rebuilt from the input.

XLA's CPU compiler would merge a rebuilt transform with the forward's (CSE) or compute it
during the forward pass, as soon as its input exists, and keep it; it also drops
``lax.optimization_barrier``. So what the backward pass rebuilds goes through
:func:`after`, which makes it depend on the output gradient. The two transforms that build
stacked tiles (input and output-gradient tiles) are one broadcast expression over the stack
(:func:`_stacked_sums`), one fusion that writes the stack directly; the output and
input-gradient transforms are written entry by entry (:func:`_two_sided`, no intermediate
shared between outputs), so each entry fuses into one pass over memory. In the CPU train
step at batch 32 this took XLA's temporaries from 1311 to 666 MB (``vgg_aib``) and from
3.5 GB to 1.7 GB (``wrn_aib``, with the slices form's written-out gradient in ``conv.py``).
Both passes run in batch chunks small enough for a chunk's tiles to stay in cache
(``FORWARD_CHUNK_BYTES``, ``BACKWARD_CHUNK_BYTES``), one chunk after the other.

Why here: on CPU the train step of the wide models spends over 90% of its time in 3x3
stride-1 convolutions, and the matmul is already near the machine's peak, so fewer
FLOPs is the remaining lever; their activation memory was most of the step's temporaries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

# F(2x2, 3x3): input transform B^T (4x4), output transform A^T (2x4), kernel transform G (4x3).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int8)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.int8)
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
_G_KRON = np.kron(_G, _G)  # (16, 9): row 4a+b, column 3i+j holds G[a, i] * G[b, j]
_BB = np.kron(_BT, _BT)  # (16, 16): B^T d B of a tile, row 4a+b, column 4i+j (entry d[i, j])
_AA = np.kron(_AT.T, _AT.T)  # (16, 4): A dy A^T of a 2x2 output-gradient block, column 2i+j

# Both passes run in batch chunks, one after the other, so that one chunk's input tiles,
# products and output transform stay in the processor's cache instead of streaming through
# memory, and the step's peak memory stays bounded. A forward chunk's tiles (16 x tiles x
# max(cin, cout) values) are at most FORWARD_CHUNK_BYTES, a backward chunk's at most
# BACKWARD_CHUNK_BYTES. The forward pass loops (lax.map: one compiled body, whatever the
# number of chunks); the backward pass is unrolled, because XLA's CPU buffer assignment gave
# every backward loop body its own memory (vgg_aib's step at batch 32: 928 MB of temporaries
# against 576 MB unrolled), and takes larger chunks to bound the compile time. Measured at
# batch 32 on 2 cores of an AMD EPYC (AVX-512), layer by layer, ms, whole batch against
# chunks: forward 32x32x128->128 81 against 47, 32x32x256->256 245 against 149,
# 16x16x512->512 169 against 134; backward (8 / 16 / 64 MiB chunks, whole batch)
# 32x32x64->64 65 / 79 / 91, 94; 32x32x128->128 112 / 110 / 138, 143; 32x32x256->256
# 309 / 327 / 373, 400; 16x16x512->512 285 / 270 / 280, 290. The train step against the
# previous whole-batch forward and 64 MiB backward chunks, compiled in one process and timed
# alternately: vgg_aib 1.053x (temporaries 631 -> 576 MB, compile 10 -> 14 s), wrn_aib 1.054x
# (1274 -> 1360 MB, 28 -> 41 s).
FORWARD_CHUNK_BYTES = 8 * 2**20
BACKWARD_CHUNK_BYTES = 16 * 2**20


def _signed_sum(terms: list[tuple[int, Array]]) -> Array:
    """``sum(c * a)`` for coefficients ``c`` of +-1 (zeros skipped), written with additions and subtractions."""
    terms = [(c, a) for c, a in terms if c]
    out = terms[0][1] if terms[0][0] > 0 else -terms[0][1]
    for c, a in terms[1:]:
        out = out + a if c > 0 else out - a
    return out


Entries = dict[tuple[int, int], Array]


def _two_sided(left: np.ndarray, right: np.ndarray, parts: Entries) -> Entries:
    """``left @ P @ right^T`` entry by entry, where ``parts[(i, j)]`` is entry (i, j) of P, each an array.

    Every output entry is written as its own sum of the inputs, with no intermediate
    shared between outputs, so XLA fuses each transform into one pass over memory.
    """
    return {(a, b): _signed_sum([(int(left[a, i] * right[b, j]), parts[(i, j)])
                                 for i in range(left.shape[1]) for j in range(right.shape[1])])
            for a in range(left.shape[0]) for b in range(right.shape[0])}


def _tile_entries(xp: Array, th: int, tw: int) -> list[Array]:
    """The 16 entries of every 4x4 tile at stride 2, row-major (i, j): ``xp[:, 2t+i, 2s+j]`` for all tiles (t, s).

    ``xp`` is (b, 2*th+2, 2*tw+2, c); split into (row pairs, parity) per axis, entry (i, j) is a
    plain slice of that view, (b, th, tw, c) each.
    """
    b, _, _, c = xp.shape
    pairs = xp.reshape(b, th + 1, 2, tw + 1, 2, c)
    return [pairs[:, i // 2:i // 2 + th, i % 2, j // 2:j // 2 + tw, j % 2] for i in range(4) for j in range(4)]


def _stacked_sums(coef: np.ndarray, parts: list[Array]) -> Array:
    """``stack([sum_i coef[k, i] * parts[i] for k])``: (n_out, n_in) constants, n_in arrays -> (n_out, *shape).

    Written as one broadcast expression over the stacked output, so XLA computes it in one
    fusion that writes the stack directly. The 16 separate sums with ``jnp.stack`` ran as 16
    fusions and a copy: the input tiles of a 16x16x640 map at batch 32 took 38 ms that way
    and 18 ms this way. The coefficients are 0 and +-1, so each product is exact and the sums
    equal the add/subtract form bit for bit.
    """
    n_out = coef.shape[0]
    out = None
    for column, part in zip(coef.T, parts, strict=True):
        if not column.any():
            continue
        term = jnp.asarray(column, part.dtype).reshape(n_out, *(1,) * part.ndim) * part[None]
        out = term if out is None else out + term
    return out


def winograd_kernel(kernel: Array) -> Array:
    """``G g G^T`` for every channel pair: (3, 3, cin, cout) -> (16, cin, cout).

    One product ``kron(G, G) @ kernel`` with the kernel as (9, cin*cout): as an einsum over
    (3, 3, cin, cout) XLA computed it as two products with inner size 3 and transposes of
    the whole kernel: 42.5 ms for a 640 x 640 kernel on 2 threads against 2.1 ms this way.
    """
    u = jnp.dot(jnp.asarray(_G_KRON, kernel.dtype), kernel.reshape(9, -1))  # (16, cin*cout)
    return u.reshape(16, *kernel.shape[2:])


def _geometry(x_shape: tuple[int, ...], padding: Padding) -> tuple[int, int, int, int]:
    """Output rows/columns and tiles per column/row of a padded 3x3 stride-1 convolution."""
    (pt, pb), (pl, pr) = padding
    ho, wo = x_shape[1] + pt + pb - 2, x_shape[2] + pl + pr - 2
    return ho, wo, -(-ho // 2), -(-wo // 2)


def _pad_spatial(x: Array, axes: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Zero-pads (or, for negative amounts, crops) the two spatial ``axes``."""
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(axes, pads, strict=True):
        config[axis] = (lo, hi, 0)
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _tiling_pads(x_shape: tuple[int, ...], padding: Padding, th: int, tw: int) -> tuple[tuple[int, int], ...]:
    """The padding that makes the input exactly ``2*th+2`` x ``2*tw+2``: the convolution's, plus zeros for odd sizes."""
    (pt, _), (pl, _) = padding
    return (pt, 2 * th + 2 - x_shape[1] - pt), (pl, 2 * tw + 2 - x_shape[2] - pl)


def _input_tiles(x: Array, padding: Padding, th: int, tw: int) -> Array:
    """``B^T d B`` of every 4x4 input tile, stacked: (b, h, w, c) -> (16, b*th*tw, c)."""
    b, _, _, c = x.shape
    xp = _pad_spatial(x, (1, 2), _tiling_pads(x.shape, padding, th, tw))  # (b, 2th+2, 2tw+2, c)
    return _stacked_sums(_BB, _tile_entries(xp, th, tw)).reshape(16, b * th * tw, c)


def _forward_tiles(x: Array, u: Array, padding: Padding) -> Array:
    """The convolution of ``x`` with the transformed kernel ``u`` (16, cin, cout), all of ``x`` at once."""
    b, h, w, c = x.shape
    cout = u.shape[2]
    ho, wo, th, tw = _geometry(x.shape, padding)
    v = _input_tiles(x, padding, th, tw)  # (16, b*th*tw, c)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (16, b*th*tw, cout)
    m = m.reshape(16, b, th, tw, cout)

    out = _two_sided(_AT, _AT, {(a, c): m[4 * a + c] for a in range(4) for c in range(4)})  # (b, th, tw, cout) each
    y = jnp.stack([jnp.stack([out[(i, 0)], out[(i, 1)]], axis=3) for i in range(2)], axis=2)  # (b, th, 2, tw, 2, cout)
    y = y.reshape(b, 2 * th, 2 * tw, cout)
    return y[:, :ho, :wo]  # drops the extra row/column of odd sizes


def _forward(x: Array, kernel: Array, padding: Padding) -> Array:
    """The convolution, one batch chunk after the other (:func:`batch_chunk`); the kernel transformed once."""
    u = winograd_kernel(kernel)  # (16, cin, cout)
    chunk = batch_chunk(x.shape, kernel.shape[3], padding, FORWARD_CHUNK_BYTES, x.dtype)
    if chunk == x.shape[0]:
        return _forward_tiles(x, u, padding)
    chunks = x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])
    y = lax.map(lambda xc: _forward_tiles(xc, u, padding), chunks)  # (n, chunk, ho, wo, cout)
    return y.reshape(x.shape[0], *y.shape[2:])


def _output_gradient_tiles(dy: Array, th: int, tw: int) -> Array:
    """``A dy A^T`` of every 2x2 output-gradient block: (b, ho, wo, cout) -> (16, b*th*tw, cout)."""
    b, ho, wo, cout = dy.shape
    dyp = _pad_spatial(dy, (1, 2), ((0, 2 * th - ho), (0, 2 * tw - wo)))  # (b, 2th, 2tw, cout)
    blocks = dyp.reshape(b, th, 2, tw, 2, cout)
    parts = [blocks[:, :, i, :, j] for i in range(2) for j in range(2)]  # (b, th, tw, cout) each
    return _stacked_sums(_AA, parts).reshape(16, b * th * tw, cout)


def _input_gradient(dm: Array, u: Array, x_shape: tuple[int, ...], padding: Padding) -> Array:
    """dL/dx from the product-tile gradients ``dm``: ``B [dm U^T] B^T`` summed back over the overlapping tiles.

    Entry (i, j) of tile (t, s) came from padded-input position (2t+i, 2s+j), so input
    position (2u+r, 2w+q) gathers entries i in {r, r+2}, j in {q, q+2} of tiles (u - i//2, w - j//2).
    """
    b, h, w, c = x_shape
    _, _, th, tw = _geometry(x_shape, padding)
    dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))))  # (16, b*th*tw, cin)
    dv = dv.reshape(16, b, th, tw, c)
    entries = _two_sided(_BT.T, _BT.T, {(a, e): dv[4 * a + e] for a in range(4) for e in range(4)})  # (b, th, tw, c)
    shifted = {ij: _pad_spatial(e, (1, 2), ((ij[0] // 2, 1 - ij[0] // 2), (ij[1] // 2, 1 - ij[1] // 2)))
               for ij, e in entries.items()}  # (b, th+1, tw+1, c), each moved to its tile's rows/columns
    parity = {(r, q): shifted[(r, q)] + shifted[(r + 2, q)] + shifted[(r, q + 2)] + shifted[(r + 2, q + 2)]
              for r in range(2) for q in range(2)}
    dxp = jnp.stack([jnp.stack([parity[(r, 0)], parity[(r, 1)]], axis=3) for r in range(2)], axis=2)
    dxp = dxp.reshape(b, 2 * th + 2, 2 * tw + 2, c)
    (top, bottom), (left, right) = _tiling_pads(x_shape, padding, th, tw)
    return _pad_spatial(dxp, (1, 2), ((-top, -bottom), (-left, -right)))  # the padding's rows/columns dropped


def _tile_gradient(x: Array, dm: Array, padding: Padding) -> Array:
    """dL/du of the transformed kernel: ``sum over tiles (B^T d B)^T dm``, 16 batched (cin x tiles) @ (tiles x cout)."""
    _, _, th, tw = _geometry(x.shape, padding)
    v = _input_tiles(x, padding, th, tw)  # (16, b*th*tw, cin)
    return lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))  # (16, cin, cout)


def _kernel_gradient(du: Array) -> Array:
    """dL/dkernel from dL/du: ``G^T du G`` for every channel pair, as one product (see winograd_kernel)."""
    _, c, cout = du.shape
    dk = jnp.dot(jnp.asarray(_G_KRON.T, du.dtype), du.reshape(16, -1))  # (9, cin*cout)
    return dk.reshape(3, 3, c, cout)


def after(x: Array, dy: Array) -> Array:
    """``x``, made to depend on ``dy``: computations on the result cannot run before ``dy`` exists.

    XLA's CPU scheduler otherwise builds the backward pass's input tiles during the forward
    pass, as soon as ``x`` exists, and keeps them alive until the backward pass (its
    pipeline drops ``lax.optimization_barrier``). The added zero is ``0 * dy[0, 0, 0, 0]``,
    which XLA does not fold for floats (it would be NaN for a non-finite ``dy``, where the
    kernel gradient is non-finite anyway); it fuses into the tiles' computation.
    """
    return x + 0 * dy[(0,) * dy.ndim].astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd(x: Array, kernel: Array, padding: Padding) -> Array:
    return _forward(x, kernel, padding)


def _winograd_fwd(x: Array, kernel: Array, padding: Padding) -> tuple[Array, tuple[Array, Array]]:
    return _forward(x, kernel, padding), (x, kernel)  # keeps the input, not its 4x larger tiles


def batch_chunk(x_shape: tuple[int, ...], cout: int, padding: Padding, budget_bytes: int,
                dtype: jnp.dtype = jnp.float32) -> int:
    """Images per chunk: the largest divisor of the batch whose tiles fit ``budget_bytes``.

    A chunk's tiles are 16 x tiles x max(cin, cout) values; at least one image per chunk,
    however large its tiles.
    """
    _, _, th, tw = _geometry(x_shape, padding)
    per_image = 16 * th * tw * max(x_shape[3], cout) * jnp.dtype(dtype).itemsize
    batch = x_shape[0]
    return max((d for d in range(1, batch + 1) if batch % d == 0 and d * per_image <= budget_bytes), default=1)


def _winograd_bwd(padding: Padding, residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    _, _, th, tw = _geometry(x.shape, padding)
    # after(): the backward's kernel transform is its own, not the forward's kept until now
    u = winograd_kernel(after(kernel, dy))

    def one_chunk(xc: Array, dyc: Array) -> tuple[Array, Array]:
        dm = _output_gradient_tiles(dyc, th, tw)  # (16, chunk*th*tw, cout), shared by both gradients
        # after(): the input tiles are rebuilt once dy exists, not during the forward pass and kept
        return _input_gradient(dm, u, xc.shape, padding), _tile_gradient(after(xc, dyc), dm, padding)

    chunk = batch_chunk(x.shape, kernel.shape[3], padding, BACKWARD_CHUNK_BYTES, x.dtype)
    dxs, du = [], None
    for start in range(0, x.shape[0], chunk):  # one chunk after the other: each one's tiles are freed before the next
        xc, dyc = x[start:start + chunk], dy[start:start + chunk]
        if du is not None:
            dyc = after(dyc, du)
        dxc, duc = one_chunk(xc, dyc)
        dxs.append(dxc)
        du = duc if du is None else du + duc
    return jnp.concatenate(dxs), _kernel_gradient(du)


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


def conv2d_winograd(x: Array, kernel: Array, padding: Padding = ((1, 1), (1, 1))) -> Array:
    """NHWC x HWIO 3x3 stride-1 convolution (cross-correlation, as in PyTorch) with F(2x2, 3x3).

    ``padding`` is ((top, bottom), (left, right)). Odd output sizes are computed on one
    extra row/column of zeros and cropped. Differentiable in ``x`` and ``kernel``.
    """
    kh, kw, cin, cout = kernel.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"conv2d_winograd computes 3x3 kernels only, got {kh}x{kw}; use conv2d_slices")
    b, h, w, c = x.shape
    if c != cin:
        raise ValueError(f"input has {c} channels but the kernel expects {cin}")
    (pt, pb), (pl, pr) = padding
    if h + pt + pb - 2 < 1 or w + pl + pr - 2 < 1:
        raise ValueError(f"a 3x3 kernel does not fit a padded {h + pt + pb}x{w + pl + pr} map")
    padding = ((int(pt), int(pb)), (int(pl), int(pr)))
    return _winograd(x, kernel, padding)
