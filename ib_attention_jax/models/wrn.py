"""The official CIFAR Wide-ResNet-28-10 AIB model (WRN-backbone-32/models/cifar/wrn_va.py).

Pre-activation BasicBlocks (BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, 1x1 shortcut
when the width changes), groups of 4 blocks with widths 160, 320, 640. The front is
conv1, group 1 and group 2 (f: 16x16x320); the mean head is the ABN attention branch
(a stride-1 copy of group 3, BN, 1x1 conv to the classes, BN, ReLU, 3x3 conv to one
channel, BN); the encoder is group 3, BN, ReLU, global mean and a Linear to 2K.
Init: convs He-normal (fan_out), BN 1/0, Linear PyTorch default weight with zero bias.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import AIBClassifier, PlainClassifier
from ib_attention_jax.models.attention import VariationalAttention
from ib_attention_jax.models.bottleneck import ReLULinearDecoder
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.dropout import Dropout
from ib_attention_jax.models.layers import (
    BackboneModule,
    he_normal_fan_out,
    torch_default_bias,
    torch_default_kernel,
)

Array = jax.Array


class WideBasicBlock(BackboneModule):
    """Pre-activation block; with a width change both paths read the activated input."""

    features: int
    stride: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = dict(use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl, dtype=self.dtype)
        equal = x.shape[-1] == self.features
        act = nn.relu(self.batch_norm(train, name="bn1")(x))
        out = Conv(self.features, 3, self.stride, name="conv1", **conv)(act)
        out = nn.relu(self.batch_norm(train, name="bn2")(out))
        if self.dropout_rate > 0:
            out = Dropout(self.dropout_rate)(out, deterministic=not train)
        out = Conv(self.features, 3, 1, name="conv2", **conv)(out)
        shortcut = x if equal else Conv(self.features, 1, self.stride, padding=0, name="convShortcut", **conv)(act)
        return shortcut + out


class WideGroup(BackboneModule):
    """``num_blocks`` WideBasicBlocks; the first one carries the stride."""

    features: int
    num_blocks: int
    stride: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i in range(self.num_blocks):
            x = WideBasicBlock(self.features, self.stride if i == 0 else 1, self.dropout_rate, **self.settings,
                               name=f"layer{i}")(x, train)
        return x


class WRNModule(BackboneModule):
    """Base of the WRN parts: depth (6n + 4), widening factor and dropout, keyword-only."""

    _: dataclasses.KW_ONLY
    depth: int = 28
    widen: int = 10
    dropout_rate: float = 0.3

    @property
    def blocks_and_widths(self) -> tuple[int, list[int]]:
        """Blocks per group n = (depth - 4) / 6 and the widths of conv1 and the three groups."""
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {self.depth}")
        return (self.depth - 4) // 6, [16, 16 * self.widen, 32 * self.widen, 64 * self.widen]


class WRNFront(WRNModule):
    """conv1, group 1 (stride 1) and group 2 (stride 2): (b, 32, 32, 3) -> (b, 16, 16, 32*widen)."""


    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        n, w = self.blocks_and_widths
        kw = dict(dropout_rate=self.dropout_rate, conv_impl=self.conv_impl, bn_axis_name=self.bn_axis_name,
                  dtype=self.dtype)
        x = Conv(w[0], 3, use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl, dtype=self.dtype,
                 name="conv1")(x)
        x = WideGroup(w[1], n, 1, name="block1", **kw)(x, train)
        return WideGroup(w[2], n, 2, name="block2", **kw)(x, train)


class ABNMeanHead(WRNModule):
    """The ABN attention branch without its classification loss: logits map (b, h, w, 1).

    ``return_features=True`` also returns the branch's class-channel map (b, h, w, classes),
    the input of both the map conv and ABN's attention-branch classifier (``models/abn.py``).
    """

    num_classes: int
    return_features: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array | tuple[Array, Array]:
        n, w = self.blocks_and_widths
        bn = functools.partial(self.batch_norm, train)
        conv = dict(use_bias=False, kernel_init=he_normal_fan_out, impl=self.conv_impl, dtype=self.dtype)
        x = WideGroup(w[3], n, 1, self.dropout_rate, **self.settings,
                      name="att_block3")(x, train)
        x = bn("bn_att")(x)
        ax = nn.relu(bn("bn_att2")(Conv(self.num_classes, 1, padding=0, name="att_conv", **conv)(x)))
        logit = bn("bn_att3")(Conv(1, 3, name="att_conv3", **conv)(ax))  # (b, h, w, 1)
        return (ax, logit) if self.return_features else logit


class WRNEncoder(WRNModule):
    """Group 3 (stride 2), BN, ReLU, global mean, Linear to ``out_dim``."""

    out_dim: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        n, w = self.blocks_and_widths
        x = WideGroup(w[3], n, 2, self.dropout_rate, **self.settings,
                      name="block3")(x, train)
        x = nn.relu(self.batch_norm(train, name="bn1")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.out_dim, kernel_init=torch_default_kernel, dtype=self.dtype, name="fc")(x)


def wrn_aib(num_classes: int = 10, *, depth: int = 28, widen: int = 10, dropout_rate: float = 0.3,
            latent_dim: int = 512, num_anchors: int = 0, anchor_init: str = "linspace",
            conv_impl: str = "auto", bn_axis_name: str | None = None, dtype: Any = None,
            image_size: int = 32, model_name: str = "wrn_aib") -> AIBClassifier:
    """The official ``WideResNet`` AIB model (``num_anchors > 0``: ``WideResNet_QT``)."""
    kw = dict(depth=depth, widen=widen, dropout_rate=dropout_rate, conv_impl=conv_impl,
              bn_axis_name=bn_axis_name, dtype=dtype)
    return AIBClassifier(
        front=WRNFront(**kw),
        attention=VariationalAttention(ABNMeanHead(num_classes, **kw), std_kernel_init=he_normal_fan_out,
                                       std_bias_init=torch_default_bias(9), conv_impl=conv_impl),
        encoder=WRNEncoder(2 * latent_dim, **kw),
        decoder=ReLULinearDecoder(num_classes, kernel_init=torch_default_kernel, dtype=dtype),
        latent_dim=latent_dim, num_anchors=num_anchors, anchor_init=anchor_init,
        image_size=image_size, model_name=model_name)


def wrn_plain(num_classes: int = 10, *, depth: int = 28, widen: int = 10, dropout_rate: float = 0.3,
              conv_impl: str = "auto", bn_axis_name: str | None = None, dtype: Any = None,
              image_size: int = 32, model_name: str = "wrn_plain") -> PlainClassifier:
    """The plain WRN-28-10 (dropout 0.3): conv1, three groups, BN, ReLU, mean, Linear."""
    kw = dict(depth=depth, widen=widen, dropout_rate=dropout_rate, conv_impl=conv_impl,
              bn_axis_name=bn_axis_name, dtype=dtype)
    return PlainClassifier(front=WRNFront(**kw), encoder=WRNEncoder(num_classes, **kw),
                           image_size=image_size, model_name=model_name)
