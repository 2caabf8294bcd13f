"""Scalar anchor quantisation of attention values with a straight-through gradient."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ib_attention_jax.models.layers import at_least_float32

Array = jax.Array

ANCHOR_INITS = ("linspace", "uniform")


@chex.dataclass(frozen=True)
class QuantizerOutput:
    """The quantised map and everything needed to train and log the anchors."""

    quantized: Array  # same shape as the input; value = nearest anchor, gradient = identity
    index: Array  # int32, same shape as the input without gradients
    vq_loss: Array  # mean (q - sg(a))^2: reaches the anchors only
    commit_loss: Array  # mean (a - sg(q))^2: reaches the attention only
    usage: Array  # (Q,) number of values assigned to each anchor
    perplexity: Array  # exp(entropy of the usage distribution), in [1, Q]


def nearest_anchor(values: Array, anchors: Array) -> Array:
    """Index of the nearest anchor by squared distance (first index on ties, like argmin)."""
    return jnp.argmin(jnp.square(values[..., None] - anchors), axis=-1)


def quantize(values: Array, anchors: Array) -> QuantizerOutput:
    """Pure quantiser: nearest anchor, straight-through output, losses and usage."""
    index = nearest_anchor(lax.stop_gradient(values), anchors)
    q = anchors[index]
    quantized = values + lax.stop_gradient(q - values)
    vq_loss = jnp.mean(jnp.square(q - lax.stop_gradient(values)))
    commit_loss = jnp.mean(jnp.square(values - lax.stop_gradient(q)))
    usage = jnp.sum(jax.nn.one_hot(index.reshape(-1), anchors.shape[0], dtype=jnp.float32), axis=0)
    p = usage / jnp.maximum(jnp.sum(usage), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return QuantizerOutput(quantized=quantized, index=index, vq_loss=vq_loss, commit_loss=commit_loss,
                           usage=lax.stop_gradient(usage), perplexity=lax.stop_gradient(jnp.exp(entropy)))


class AnchorQuantizer(nn.Module):
    """Q learnable scalar anchors (``params['anchors']``, shape (Q,)); see :func:`quantize`.

    ``anchor_init='linspace'`` spaces them evenly over ``init_range`` (the official default);
    ``'uniform'`` draws them from U(init_range) (the official ``rd_init``).
    """

    num_anchors: int
    anchor_init: str = "linspace"
    init_range: tuple[float, float] = (0.0, 1.0)

    def setup(self) -> None:
        if self.num_anchors < 1:
            raise ValueError(f"num_anchors must be >= 1, got {self.num_anchors}")
        if self.anchor_init not in ANCHOR_INITS:
            raise ValueError(f"anchor_init must be one of {ANCHOR_INITS}, got {self.anchor_init!r}")
        lo, hi = self.init_range

        def init_fn(key, shape, dtype=jnp.float32):
            if self.anchor_init == "linspace":
                return jnp.linspace(lo, hi, shape[0], dtype=dtype)
            return jax.random.uniform(key, shape, dtype, lo, hi)

        self.anchors = self.param("anchors", init_fn, (self.num_anchors,), jnp.float32)

    def __call__(self, values: Array) -> QuantizerOutput:
        return quantize(at_least_float32(values), self.anchors)
