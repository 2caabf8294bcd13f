"""The VIB part: Gaussian latent from encoder statistics, and the official decoders."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.attention import offset_softplus, standard_normal
from ib_attention_jax.models.layers import at_least_float32

Array = jax.Array


@chex.dataclass(frozen=True)
class LatentOutput:
    mean: Array  # (rows, K)
    std: Array  # (rows, K) softplus(stats[:, K:] - 5)
    samples: Array  # (n, rows, K)


class GaussianLatent(nn.Module):
    """Splits encoder statistics (rows, 2K) into mean and ``softplus(. - 5)`` std, draws n samples.

    Noise comes from the ``latent`` RNG stream; ``deterministic=True`` gives zero noise.
    ``example_ids`` (b,) with rows in sample-major order (row s*b + i belongs to image i)
    draws each image's noise from ``fold_in(key, id)``, independent of device sharding.
    """

    latent_dim: int

    @nn.compact
    def __call__(self, stats: Array, *, num_samples: int = 1, deterministic: bool = False,
                 example_ids: Array | None = None) -> LatentOutput:
        k = self.latent_dim
        chex.assert_shape(stats, (None, 2 * k))
        stats = at_least_float32(stats)
        mean, std = stats[:, :k], offset_softplus(stats[:, k:])
        shape = (num_samples,) + mean.shape
        if deterministic:
            eps = jnp.zeros(shape, mean.dtype)
        elif example_ids is None:
            eps = standard_normal(self.make_rng("latent"), shape)
        else:
            b = example_ids.shape[0]
            n_a = mean.shape[0] // b  # rows = n_a * b, sample-major
            eps = standard_normal(self.make_rng("latent"), (num_samples, n_a, b, k), example_ids, batch_axis=2)
            eps = eps.reshape(shape)
        return LatentOutput(mean=mean, std=std, samples=mean[None] + eps * std[None])


class _OfficialDecoder(nn.Module):
    """What the official decoders share: the class count and their Linear layers' initialisers and dtype."""

    num_classes: int
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    dtype: Any = None

    def linear(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(features, kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype, name=name)


class MLPDecoder(_OfficialDecoder):
    """Linear K->K, ReLU, Linear K->classes (official VGG and CUB decoders)."""

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> Array:
        z = nn.relu(self.linear(z.shape[-1], "fc1")(z))
        return self.linear(self.num_classes, "fc2")(z)


class ReLULinearDecoder(_OfficialDecoder):
    """ReLU then Linear K->classes (the official WRN 'v3' decoder)."""

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> Array:
        return self.linear(self.num_classes, "fc")(nn.relu(z))
