"""A small AIB model for 32x32 inputs (about 125k parameters) for quickstarts and tests.

Front: 2 x [Conv3x3 32 - BN - ReLU], 2x2 max-pool (f: 16x16x32, where the attention
sits); encoder: Conv 64 - BN - ReLU - pool, Conv 128 - BN - ReLU - pool, global mean,
Linear to 2K (K = 64); decoder Linear K->K, ReLU, Linear K->classes. The attention
baselines LTPA and ABN on the same convolutions: ``small_ltpa``, ``small_abn``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.abn import ABNClassifier
from ib_attention_jax.models.aib import AIBClassifier, PlainClassifier
from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention
from ib_attention_jax.models.bottleneck import MLPDecoder
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import BackboneModule, he_normal_fan_out, max_pool
from ib_attention_jax.models.ltpa import LTPAClassifier
from ib_attention_jax.models.wrn import ABNMeanHead

Array = jax.Array


class ConvBNReLU(BackboneModule):
    features: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv(self.features, 3, use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl,
                 dtype=self.dtype, name="conv")(x)
        return nn.relu(self.batch_norm(train, name="bn")(x))


class SmallFront(BackboneModule):
    width: int = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = self.settings
        x = ConvBNReLU(self.width, name="conv1", **kw)(x, train)
        x = ConvBNReLU(self.width, name="conv2", **kw)(x, train)
        return max_pool(x, 2)


class SmallEncoder(BackboneModule):
    out_dim: int
    widths: tuple[int, ...] = (64, 128)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i, width in enumerate(self.widths):
            x = ConvBNReLU(width, **self.settings, name=f"conv{i + 3}")(x, train)
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


class SmallLTPATrunk(BackboneModule):
    """LTPA's trunk on the quickstart widths: l1 = conv2 (32x32x32), l2 = conv3 (16x16x64), l3 = conv4
    (8x8x128), each before its 2x2 pool; g = Linear(128) of the mean of the last pooled map (4x4x128)."""

    widths: tuple[int, int, int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[tuple[Array, Array, Array], Array]:
        kw = self.settings
        w1, w2, w3 = self.widths
        x = ConvBNReLU(w1, name="conv1", **kw)(x, train)
        l1 = ConvBNReLU(w1, name="conv2", **kw)(x, train)
        l2 = ConvBNReLU(w2, name="conv3", **kw)(max_pool(l1, 2), train)
        l3 = ConvBNReLU(w3, name="conv4", **kw)(max_pool(l2, 2), train)
        g = nn.Dense(w3, dtype=self.dtype, name="dense")(jnp.mean(max_pool(l3, 2), axis=(1, 2)))  # (b, w3)
        return (l1, l2, l3), g


def small_ltpa(num_classes: int = 10, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
               dtype: Any = None, image_size: int = 32, model_name: str = "small_ltpa") -> LTPAClassifier:
    """LTPA (attention before pooling, softmax over positions, three maps at 32, 16 and 8 px) on the
    quickstart convolutions; l1 and l2 are projected to g's 128 channels."""
    trunk = SmallLTPATrunk(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return LTPAClassifier(trunk, num_classes=num_classes, conv_impl=conv_impl, dtype=dtype, image_size=image_size,
                          model_name=model_name)


def small_abn(num_classes: int = 10, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
              dtype: Any = None, image_size: int = 32, model_name: str = "small_abn") -> ABNClassifier:
    """ABN on the quickstart backbone: the attention branch (one stride-1 pre-activation block to 64
    channels, then ABN's head) and the perception branch (the quickstart encoder) both read the
    16x16x32 front map; the map, like small_aib's, is 16x16."""
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    branch = ABNMeanHead(num_classes, depth=10, widen=1, dropout_rate=0.0, return_features=True, **kw)
    return ABNClassifier(front=SmallFront(**kw), branch=branch, perception=SmallEncoder(num_classes, **kw),
                         num_classes=num_classes, conv_impl=conv_impl, dtype=dtype, image_size=image_size,
                         model_name=model_name)
