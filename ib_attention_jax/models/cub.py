"""The official CUB-200 models (CUB-experiments/model.py, model_qt.py): VGG-16 and WRN-50-2 at 224x224.

VGG-16: ``features[:-1]`` (13 conv+ReLU, 4 max-pools; f: 14x14x512); mean head one 3x3
conv (AIB) or 3 x [3x3 conv 512 + ReLU] then a 3x3 conv to one channel (AIB-QT, the
official QT model's deeper head); encoder AdaptiveAvgPool(3x3), flatten, Linear to 2K.
WRN-50-2: conv1/bn1/maxpool/layer1-3 (f: 14x14x1024); mean head a stride-1 layer4-like
stack (``att_layer4``) then a 3x3 conv; encoder layer4, global mean, Linear to 2K.
Both decode with Linear K->K, ReLU, Linear K->classes. The official runs start the
backbones from ImageNet weights; convert a torchvision state_dict with
``ib_attention_jax.interop`` to do the same.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import AIBClassifier, PlainClassifier
from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention
from ib_attention_jax.models.bottleneck import MLPDecoder
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import (
    BackboneModule,
    adaptive_avg_pool,
    he_normal_fan_out,
    max_pool,
    torch_default_bias,
    torch_default_kernel,
    xavier_uniform_relu,
)

Array = jax.Array

# torchvision VGG-16 cfg "D" without the last max-pool; names conv{stage}_{i}.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_conv_names() -> list[str]:
    return [f"conv{s + 1}_{i + 1}" for s, (_, n) in enumerate(VGG16_STAGES) for i in range(n)]


class VGG16Front(nn.Module):
    """torchvision VGG-16 ``features[:-1]``: (b, 224, 224, 3) -> (b, 14, 14, 512)."""

    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for s, (width, n) in enumerate(VGG16_STAGES):
            for i in range(n):
                x = nn.relu(Conv(width, 3, kernel_init=xavier_uniform_relu, impl=self.conv_impl, dtype=self.dtype,
                                 name=f"conv{s + 1}_{i + 1}")(x))
            if s < len(VGG16_STAGES) - 1:
                x = max_pool(x, 2)
        return x


class DeepConvMeanHead(nn.Module):
    """The official CUB VGG-16 QT mean head: 3 x [3x3 conv 512 + ReLU], 3x3 conv to one channel."""

    width: int = 512
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(kernel_init=xavier_uniform_relu, impl=self.conv_impl, dtype=self.dtype)
        for i in range(3):
            x = nn.relu(Conv(self.width, 3, name=f"conv{i}", **kw)(x))
        return Conv(1, 3, name="conv3", **kw)(x)


class PooledLinearEncoder(nn.Module):
    """AdaptiveAvgPool to ``pool`` x ``pool``, NHWC flatten, Linear to ``out_dim``.

    The official weight reads an NCHW flatten; ``interop`` permutes it on conversion.
    """

    out_dim: int
    pool: int = 3
    kernel_init: Any = xavier_uniform_relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = adaptive_avg_pool(x, self.pool)
        return nn.Dense(self.out_dim, kernel_init=self.kernel_init, dtype=self.dtype,
                        name="fc")(x.reshape(x.shape[0], -1))


class Bottleneck(BackboneModule):
    """torchvision ResNet-v1.5 Bottleneck (stride on the 3x3), with an optional projection."""

    planes: int
    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out_ch = self.planes * 4
        conv = dict(use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl, dtype=self.dtype)
        bn = functools.partial(self.batch_norm, train)
        y = nn.relu(bn("bn1")(Conv(self.width, 1, padding=0, name="conv1", **conv)(x)))
        y = nn.relu(bn("bn2")(Conv(self.width, 3, self.stride, name="conv2", **conv)(y)))
        y = bn("bn3")(Conv(out_ch, 1, padding=0, name="conv3", **conv)(y))
        if self.stride != 1 or x.shape[-1] != out_ch:
            x = bn("downsample_bn")(Conv(out_ch, 1, self.stride, padding=0, name="downsample_conv", **conv)(x))
        return nn.relu(x + y)


class ResNetStage(BackboneModule):
    """``num_blocks`` Bottlenecks of wide ResNet-50-2 (width = 2 * planes)."""

    planes: int
    num_blocks: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i in range(self.num_blocks):
            stride = self.stride if i == 0 else 1
            x = Bottleneck(self.planes, 2 * self.planes, stride, **self.settings, name=f"block{i}")(x, train)
        return x


class WRN50Front(BackboneModule):
    """conv1 7x7/2, BN, ReLU, max-pool 3/2, layer1-3: (b, 224, 224, 3) -> (b, 14, 14, 1024)."""


    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = self.settings
        x = Conv(64, 7, 2, padding=3, use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl,
                 dtype=self.dtype, name="conv1")(x)
        x = nn.relu(self.batch_norm(train, name="bn1")(x))
        x = max_pool(x, 3, 2, padding=1)
        x = ResNetStage(64, 3, 1, name="layer1", **kw)(x, train)
        x = ResNetStage(128, 4, 2, name="layer2", **kw)(x, train)
        return ResNetStage(256, 6, 2, name="layer3", **kw)(x, train)


class WRN50MeanHead(BackboneModule):
    """``att_layer4`` (3 Bottlenecks, planes 512, stride 1) then a 3x3 conv (bias) to one channel."""


    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = ResNetStage(512, 3, 1, **self.settings, name="att_layer4")(x, train)
        return Conv(1, 3, kernel_init=he_normal_fan_out, bias_init=torch_default_bias(9 * x.shape[-1]),
                    impl=self.conv_impl, dtype=self.dtype, name="conv")(x)


class WRN50Encoder(BackboneModule):
    """layer4 (stride 2), global mean, Linear to ``out_dim``."""

    out_dim: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = ResNetStage(512, 3, 2, **self.settings, name="layer4")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.out_dim, kernel_init=torch_default_kernel, bias_init=torch_default_bias(x.shape[-1]),
                        dtype=self.dtype, name="fc")(x)


def cub_vgg16_aib(num_classes: int = 200, *, latent_dim: int = 256, num_anchors: int = 0,
                  anchor_init: str = "linspace", deep_head: bool | None = None, conv_impl: str = "auto",
                  bn_axis_name: str | None = None, dtype: Any = None, image_size: int = 224,
                  model_name: str = "cub_vgg16_aib") -> AIBClassifier:
    """``VaNet_vgg``; the QT model (``num_anchors > 0``) gets the deeper mean head by default."""
    del bn_axis_name  # VGG-16 has no BatchNorm
    deep = bool(num_anchors) if deep_head is None else deep_head
    head = (DeepConvMeanHead(conv_impl=conv_impl, dtype=dtype) if deep
            else ConvMeanHead(kernel_init=xavier_uniform_relu, conv_impl=conv_impl, dtype=dtype))
    return AIBClassifier(
        front=VGG16Front(conv_impl, dtype),
        attention=VariationalAttention(head, std_kernel_init=xavier_uniform_relu, conv_impl=conv_impl),
        encoder=PooledLinearEncoder(2 * latent_dim, dtype=dtype),
        decoder=MLPDecoder(num_classes, kernel_init=xavier_uniform_relu, dtype=dtype),
        latent_dim=latent_dim, num_anchors=num_anchors, anchor_init=anchor_init,
        image_size=image_size, model_name=model_name)


def cub_wrn50_2_aib(num_classes: int = 200, *, latent_dim: int = 256, num_anchors: int = 0,
                    anchor_init: str = "linspace", conv_impl: str = "auto", bn_axis_name: str | None = None,
                    dtype: Any = None, image_size: int = 224, model_name: str = "cub_wrn50_2_aib") -> AIBClassifier:
    """``VaNet_wrn`` (the unused ``tmp_layer`` of the official class is left out)."""
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return AIBClassifier(
        front=WRN50Front(**kw),
        attention=VariationalAttention(WRN50MeanHead(**kw), std_kernel_init=he_normal_fan_out,
                                       std_bias_init=torch_default_bias(9), conv_impl=conv_impl),
        encoder=WRN50Encoder(2 * latent_dim, **kw),
        decoder=MLPDecoder(num_classes, kernel_init=torch_default_kernel, bias_init=torch_default_bias(latent_dim),
                           dtype=dtype),
        latent_dim=latent_dim, num_anchors=num_anchors, anchor_init=anchor_init,
        image_size=image_size, model_name=model_name)


def cub_vgg16_plain(num_classes: int = 200, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
                    dtype: Any = None, image_size: int = 224, model_name: str = "cub_vgg16_plain") -> PlainClassifier:
    """VGG-16 features, 3x3 adaptive pool, Linear to the classes."""
    del bn_axis_name
    return PlainClassifier(front=VGG16Front(conv_impl, dtype), encoder=PooledLinearEncoder(num_classes, dtype=dtype),
                           image_size=image_size, model_name=model_name)


def cub_wrn50_2_plain(num_classes: int = 200, *, conv_impl: str = "auto", bn_axis_name: str | None = None,
                      dtype: Any = None, image_size: int = 224,
                      model_name: str = "cub_wrn50_2_plain") -> PlainClassifier:
    """Wide ResNet-50-2 with its Linear classifier."""
    kw = dict(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return PlainClassifier(front=WRN50Front(**kw), encoder=WRN50Encoder(num_classes, **kw),
                           image_size=image_size, model_name=model_name)
