"""The official CIFAR VGG (the LTPA trunk) as front, encoder and builders.

Official layout (VGG-backbone-32/cifar_va.py): conv blocks of Conv3x3(bias)-BN-ReLU;
front = 2x64, 2x128, 3x256 at 32x32 then a 2x2 max-pool (f: 16x16x256); encoder =
3x512 + pool, 3x512 + pool, 2x512 with a pool after each conv, a "dense" conv whose
kernel covers the remaining map (1x1 for 32x32 inputs), ReLU, Linear to 2K.
Init (LTPA ``xavierUniform``): Xavier-uniform with gain sqrt(2), zero biases, BN scale U(0, 1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from ib_attention_jax.models.aib import AIBClassifier, PlainClassifier
from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention
from ib_attention_jax.models.bottleneck import MLPDecoder
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import BackboneModule, max_pool, uniform_01, xavier_uniform_relu

Array = jax.Array


class ConvBNBlock(BackboneModule):
    """``num_convs`` x [Conv3x3(bias) -> BN -> ReLU (-> 2x2 max-pool if pool_each)]."""

    features: int
    num_convs: int
    pool_each: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for j in range(self.num_convs):
            x = Conv(self.features, 3, kernel_init=xavier_uniform_relu, impl=self.conv_impl, dtype=self.dtype,
                     name=f"conv{j}")(x)
            x = self.batch_norm(train, name=f"bn{j}", scale_init=uniform_01)(x)
            x = nn.relu(x)
            if self.pool_each:
                x = max_pool(x, 2)
        return x


class VGGFront(BackboneModule):
    """Blocks 1-3 at full resolution, then a 2x2 max-pool: (b, 32, 32, 3) -> (b, 16, 16, 256)."""


    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = self.settings
        x = ConvBNBlock(64, 2, name="block1", **kw)(x, train)
        x = ConvBNBlock(128, 2, name="block2", **kw)(x, train)
        x = ConvBNBlock(256, 3, name="block3", **kw)(x, train)
        return max_pool(x, 2)


class VGGEncoder(BackboneModule):
    """Blocks 4-6, the dense conv and a Linear to ``out_dim`` (2K, or the classes when plain)."""

    out_dim: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = self.settings
        x = max_pool(ConvBNBlock(512, 3, name="block4", **kw)(x, train), 2)
        x = max_pool(ConvBNBlock(512, 3, name="block5", **kw)(x, train), 2)
        x = ConvBNBlock(512, 2, pool_each=True, name="block6", **kw)(x, train)
        # The official "dense" conv: kernel im_size/32, i.e. the whole remaining map.
        x = Conv(512, x.shape[1], padding=0, kernel_init=xavier_uniform_relu, impl=self.conv_impl,
                 dtype=self.dtype, name="dense")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return nn.Dense(self.out_dim, kernel_init=xavier_uniform_relu, dtype=self.dtype, name="fc")(x)


def vgg_aib(num_classes: int = 10, *, latent_dim: int = 256, num_anchors: int = 0,
            anchor_init: str = "linspace", conv_impl: str = "auto", bn_axis_name: str | None = None,
            dtype: Any = None, image_size: int = 32, model_name: str = "vgg_aib") -> AIBClassifier:
    """The official ``Vgg16_bn_lrn_VANet`` (``num_anchors > 0``: ``..._QT``)."""
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    head = ConvMeanHead(kernel_init=xavier_uniform_relu, conv_impl=conv_impl, dtype=dtype)
    return AIBClassifier(
        front=VGGFront(**kw),
        attention=VariationalAttention(head, std_kernel_init=xavier_uniform_relu, conv_impl=conv_impl),
        encoder=VGGEncoder(2 * latent_dim, **kw),
        decoder=MLPDecoder(num_classes, kernel_init=xavier_uniform_relu, dtype=dtype),
        latent_dim=latent_dim, num_anchors=num_anchors, anchor_init=anchor_init,
        image_size=image_size, model_name=model_name)


def vgg_plain(num_classes: int = 10, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
              dtype: Any = None, image_size: int = 32, model_name: str = "vgg_plain") -> PlainClassifier:
    """The same VGG with the encoder's last Linear classifying directly."""
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return PlainClassifier(front=VGGFront(**kw), encoder=VGGEncoder(num_classes, **kw),
                           image_size=image_size, model_name=model_name)
