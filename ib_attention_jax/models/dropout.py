"""Dropout whose gradient keeps a bit-packed mask: 1 bit per element from the forward pass to the backward.

``jax.random.bernoulli`` draws 32 random bits per element, and XLA's CPU compiler fuses the
cheap ``bits < threshold`` comparison into both the forward and the backward consumer, so it
kept the raw random bits (two 32-bit words per element with threefry) of every dropout layer
until the backward pass: in the ``wrn_aib`` train step at batch 32, 42 MB per 32x32x160 layer,
8x the activation it masks. Here the mask is packed eight elements to a byte along the last
axis (a reduction, which XLA materialises instead of recomputing), the forward output is
computed from the packed mask, and the backward pass unpacks it. The mask is the same as
``flax.linen.Dropout``'s for the same key (the same ``bernoulli`` call), so outputs and
gradients are bitwise those of Flax's layer.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
# bit i of a byte holds element i of its group of eight; numpy, so importing starts no JAX backend
_BITS = np.arange(8, dtype=np.uint8)


def _pack(keep: Array) -> Array:
    """(..., c) bool -> (..., ceil(c/8)) uint8, element j of the last axis in bit j % 8 of byte j // 8."""
    c = keep.shape[-1]
    pad = -c % 8
    if pad:
        keep = jnp.pad(keep, [(0, 0)] * (keep.ndim - 1) + [(0, pad)])
    groups = keep.reshape(*keep.shape[:-1], -1, 8).astype(jnp.uint8)
    return jnp.sum(groups << _BITS, axis=-1, dtype=jnp.uint8)


def _unpack(packed: Array, c: int) -> Array:
    """The inverse of :func:`_pack`: (..., ceil(c/8)) uint8 -> (..., c) bool."""
    bits = (packed[..., None] >> _BITS) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :c].astype(bool)


def _apply_mask(x: Array, keep: Array, rate: float) -> Array:
    """Flax's dropout arithmetic: kept elements scaled by ``1 / (1 - rate)``, the rest zero."""
    return lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dropout(x: Array, key: Array, rate: float) -> Array:
    """Zeroes each element of ``x`` with probability ``rate`` (mask drawn from ``key``) and scales the rest."""
    return _dropout_fwd(x, key, rate)[0]


def _dropout_fwd(x: Array, key: Array, rate: float) -> tuple[Array, Array]:
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    packed = _pack(keep)  # (..., ceil(c/8)) uint8: what the backward pass keeps
    return _apply_mask(x, _unpack(packed, x.shape[-1]), rate), packed


def _dropout_bwd(rate: float, packed: Array, dy: Array) -> tuple[Array, None]:
    # the transpose of the forward in autodiff's order (mask, then divide): bitwise Flax's gradient
    masked = lax.select(_unpack(packed, dy.shape[-1]), dy, jnp.zeros_like(dy))
    return masked / (1.0 - rate), None


dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Module):
    """``flax.linen.Dropout`` (same masks from the ``'dropout'`` stream, same outputs) with the packed-mask gradient."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        return dropout(x, self.make_rng("dropout"), self.rate)
