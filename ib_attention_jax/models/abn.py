"""ABN, the Attention Branch Network (Fukui et al., CVPR 2019), on the project's WRN pieces.

A front gives the feature map f; an attention branch reads f and gives a class-channel
map (its own classifier: 1x1 conv to the classes, global mean) and one sigmoid attention
map ``a``; the perception branch classifies ``f * (1 + a)``. Both branches are trained
with cross entropy (``objectives.aib_loss`` adds the auxiliary term), evaluation uses the
perception logits. The CIFAR model is the public ``WideResNet`` of
attention_branch_network/models/cifar/wrn.py (WRN-28-10, dropout 0.3): front = conv1,
block1, block2 (16x16x320); branch = a stride-1 copy of block3, ``bn_att``, ``att_conv``,
``bn_att2``, ReLU, then ``att_conv3`` + ``bn_att3`` + sigmoid (map) and ``att_conv2`` +
global mean (branch logits); perception = block3, bn1, ReLU, global mean, fc. Init: convs
He-normal (fan_out), BN 1/0, Linear PyTorch default weight with zero bias.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import ModelOutput, NoiselessClassifier, deterministic_attention
from ib_attention_jax.models.attention import modulate
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import at_least_float32, he_normal_fan_out
from ib_attention_jax.models.wrn import ABNMeanHead, WRNEncoder, WRNFront

Array = jax.Array


class ABNClassifier(NoiselessClassifier):
    """front -> attention branch (map + branch logits) -> perception branch on ``f * (1 + a)``.

    ``branch(f, train)`` returns ``(ax, logit)``: the class-channel map (b, h, w, classes)
    and the pre-sigmoid attention map (b, h, w, 1) (an ``ABNMeanHead`` with
    ``return_features=True``); ``perception(f_att, train)`` returns the logits.
    Output: ``logits`` (perception), ``aux_logits`` (attention branch), ``attention.mean``
    and ``attention_maps['att']`` the sigmoid map. ``num_samples`` and ``deterministic``
    are accepted for the common call and change nothing (ABN has no noise).
    """

    front: nn.Module
    branch: nn.Module
    perception: nn.Module

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, num_samples: int = 1, deterministic: bool = False,
                 example_ids: Array | None = None) -> ModelOutput:
        del deterministic, example_ids
        self.check_call(x, num_samples)
        features = self.front(x, train=train)  # (b, h, w, c)
        b, h, w = features.shape[:3]
        ax, logit = self.branch(features, train=train)  # (b, h, w, classes), (b, h, w, 1)
        chex.assert_shape(logit, (b, h, w, 1))
        att = jax.nn.sigmoid(at_least_float32(logit))
        branch_map = Conv(self.num_classes, 1, padding=0, use_bias=False, kernel_init=he_normal_fan_out,
                          impl=self.conv_impl, dtype=self.dtype, name="att_conv2")(ax)
        aux_logits = at_least_float32(jnp.mean(branch_map, axis=(1, 2)))  # the official AvgPool2d over the map
        modulated = modulate(features, att[None])  # f + f * a, (b, h, w, c)
        logits = at_least_float32(self.perception(modulated, train=train))
        if not self.is_initializing():
            self.sow("intermediates", "att_ax", ax)
        attention = deterministic_attention(logit, att, num_samples)
        return ModelOutput(logits=logits, features=features, attention=attention, attention_used=attention.samples,
                           aux_logits=aux_logits, attention_maps={"att": att[..., 0]})


def abn_wrn(num_classes: int = 10, *, depth: int = 28, widen: int = 10, dropout_rate: float = 0.3,
            conv_impl: str = "auto", bn_axis_name: str | None = None, dtype: Any = None, image_size: int = 32,
            model_name: str = "abn_wrn") -> ABNClassifier:
    """The public ABN ``WideResNet`` (CIFAR, WRN-28-10, dropout 0.3 by default)."""
    kw = dict(depth=depth, widen=widen, dropout_rate=dropout_rate, conv_impl=conv_impl, bn_axis_name=bn_axis_name,
              dtype=dtype)
    return ABNClassifier(front=WRNFront(**kw), branch=ABNMeanHead(num_classes, return_features=True, **kw),
                         perception=WRNEncoder(num_classes, **kw), num_classes=num_classes, conv_impl=conv_impl,
                         dtype=dtype, image_size=image_size, model_name=model_name)
