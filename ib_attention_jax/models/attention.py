"""Variational spatial attention: a mean map, a std map and reparameterised samples."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import at_least_float32, xavier_uniform_relu

Array = jax.Array

STD_OFFSET = 5.0  # std = softplus(x - 5): the official offset, initial std ~ softplus(-5) ~ 0.0067


def offset_softplus(x: Array) -> Array:
    """``softplus(x - 5)``: the official std activation of both the map and the latent."""
    return jax.nn.softplus(x - STD_OFFSET)


@chex.dataclass(frozen=True)
class AttentionOutput:
    """Every stage of the variational map. Maps are NHWC with one channel."""

    logit: Array  # (b, h, w, 1) pre-sigmoid mean
    mean: Array  # (b, h, w, 1) sigmoid(logit)
    std_pre: Array  # (b, h, w, 1) std conv output before softplus(. - 5)
    std: Array  # (b, h, w, 1)
    samples: Array  # (n, b, h, w, 1) mean + std * eps; eps = 0 on the zero-noise path


class ConvMeanHead(nn.Module):
    """The official CIFAR/CUB-VGG mean head: one 3x3 conv to one channel (pre-sigmoid)."""

    kernel_init: Any = xavier_uniform_relu
    bias_init: Any = nn.initializers.zeros_init()
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Array, train: bool = False) -> Array:
        return Conv(1, 3, kernel_init=self.kernel_init, bias_init=self.bias_init, impl=self.conv_impl,
                    dtype=self.dtype, name="conv")(features)


class VariationalAttention(nn.Module):
    """A pluggable mean head, a sigmoid, a 3x3 std conv on the mean map and n samples.

    ``mean_head(features, train)`` must return a one-channel logit map. Noise comes from
    the ``attention`` RNG stream; ``deterministic=True`` is the zero-noise path
    (every sample equals the mean), which needs no RNG. With ``example_ids`` (b,) the
    noise of each image is drawn from ``fold_in(key, id)``, so it does not depend on how
    a batch is split over devices.
    """

    mean_head: nn.Module
    std_kernel_init: Any = xavier_uniform_relu
    std_bias_init: Any = nn.initializers.zeros_init()
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, features: Array, *, num_samples: int = 1, deterministic: bool = False,
                 train: bool = False, example_ids: Array | None = None) -> AttentionOutput:
        logit = self.mean_head(features, train=train)
        b, h, w = features.shape[:3]
        chex.assert_shape(logit, (b, h, w, 1))
        mean = jax.nn.sigmoid(at_least_float32(logit))
        std_pre = Conv(1, 3, kernel_init=self.std_kernel_init, bias_init=self.std_bias_init,
                       impl=self.conv_impl, name="std_conv")(mean)
        std = offset_softplus(std_pre)
        shape = (num_samples,) + mean.shape
        if deterministic:
            eps = jnp.zeros(shape, mean.dtype)
        else:
            eps = standard_normal(self.make_rng("attention"), shape, example_ids, batch_axis=1)
        samples = mean[None] + eps * std[None]
        return AttentionOutput(logit=logit, mean=mean, std_pre=std_pre, std=std, samples=samples)


def standard_normal(key: Array, shape: tuple[int, ...], example_ids: Array | None = None,
                    batch_axis: int = 0) -> Array:
    """N(0, 1) noise of ``shape``; with ``example_ids`` the slice of example i along
    ``batch_axis`` comes from ``fold_in(key, example_ids[i])`` (sharding-invariant noise)."""
    if example_ids is None:
        return jax.random.normal(key, shape, jnp.float32)
    chex.assert_shape(example_ids, (shape[batch_axis],))
    per_example = shape[:batch_axis] + shape[batch_axis + 1:]
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), per_example, jnp.float32)  # noqa: E731
    return jnp.moveaxis(jax.vmap(draw)(example_ids), 0, batch_axis)


def modulate(features: Array, attention: Array) -> Array:
    """Residual modulation ``f + f * a`` with the official sample-major row order.

    features (b, h, w, c), attention (n, b, h, w, 1) -> (n * b, h, w, c); row s*b + i
    holds sample s of image i. Written as ``f + f*a`` (not ``f*(1+a)``) to round like
    the official code.
    """
    n = attention.shape[0]
    b, h, w, c = features.shape
    chex.assert_shape(attention, (n, b, h, w, 1))
    f = features[None]
    out = f + f * attention.astype(features.dtype)
    return out.reshape(n * b, h, w, c)


__all__ = ["AttentionOutput", "ConvMeanHead", "VariationalAttention", "modulate", "offset_softplus", "standard_normal"]
