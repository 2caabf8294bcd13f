"""A small AIB model for 32x32 inputs (about 125k parameters) for quickstarts and tests.

Front: 2 x [Conv3x3 32 - BN - ReLU], 2x2 max-pool (f: 16x16x32, where the attention
sits); encoder: Conv 64 - BN - ReLU - pool, Conv 128 - BN - ReLU - pool, global mean,
Linear to 2K (K = 64); decoder Linear K->K, ReLU, Linear K->classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import AIBClassifier, PlainClassifier
from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention
from ib_attention_jax.models.bottleneck import MLPDecoder
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import batch_norm, he_normal_fan_out, max_pool

Array = jax.Array


class ConvBNReLU(nn.Module):
    features: int
    conv_impl: str = "auto"
    bn_axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv(self.features, 3, use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl,
                 dtype=self.dtype, name="conv")(x)
        return nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name="bn")(x))


class SmallFront(nn.Module):
    width: int = 32
    conv_impl: str = "auto"
    bn_axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(conv_impl=self.conv_impl, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
        x = ConvBNReLU(self.width, name="conv1", **kw)(x, train)
        x = ConvBNReLU(self.width, name="conv2", **kw)(x, train)
        return max_pool(x, 2)


class SmallEncoder(nn.Module):
    out_dim: int
    widths: tuple[int, ...] = (64, 128)
    conv_impl: str = "auto"
    bn_axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i, width in enumerate(self.widths):
            x = ConvBNReLU(width, self.conv_impl, self.bn_axis_name, self.dtype, name=f"conv{i + 3}")(x, train)
            x = max_pool(x, 2)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="fc")(x)


def small_aib(num_classes: int = 10, *, latent_dim: int = 64, num_anchors: int = 0, anchor_init: str = "linspace",
              conv_impl: str = "auto", bn_axis_name: str | None = None, dtype: Any = None, image_size: int = 32,
              model_name: str = "small_aib") -> AIBClassifier:
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return AIBClassifier(
        front=SmallFront(**kw),
        attention=VariationalAttention(ConvMeanHead(conv_impl=conv_impl, dtype=dtype), conv_impl=conv_impl),
        encoder=SmallEncoder(2 * latent_dim, **kw),
        decoder=MLPDecoder(num_classes, dtype=dtype),
        latent_dim=latent_dim, num_anchors=num_anchors, anchor_init=anchor_init,
        image_size=image_size, model_name=model_name)


def small_plain(num_classes: int = 10, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
                dtype: Any = None, image_size: int = 32, model_name: str = "small_plain") -> PlainClassifier:
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return PlainClassifier(front=SmallFront(**kw), encoder=SmallEncoder(num_classes, **kw),
                           image_size=image_size, model_name=model_name)
