"""LTPA, "Learn To Pay Attention" (Jetley et al., ICLR 2018): attention before pooling, softmax over positions.

A trunk gives local feature maps L_1..L_m at several resolutions (taken before their
max-pool) and a global feature g. Each attention block scores every position with a
1x1 conv of ``L_i + g`` (the compatibility c_i), turns the scores into a distribution
over the h*w positions (softmax: the normalised mode) and pools ``g_i = sum a_i * L_i``
(a weighted SUM). The classifier reads ``concat(g_1..g_m)``. A local map whose width
differs from g's is first projected by a 1x1 conv without bias.

Because the compatibility is linear, ``op(L + g) = op(L) + w.g``: g only shifts c_i by a
per-image constant that the softmax removes, so the maps, pooled features, logits and
loss do not depend on g (nor on the layers that make it). The c_i do: compare them to
test g.

The CIFAR model is SaoYan/LearnToPayAttention's ``AttnVGG_before(im_size=32,
normalize_attn=True)``: VGG conv blocks 2x64, 2x128, 3x256 (l1, 32x32), pool, 3x512 (l2,
16x16), pool, 3x512 (l3, 8x8), pool, 2x[conv, BN, ReLU, pool] (to 1x1), ``dense`` (the
remaining map's size, i.e. a linear layer) gives g (512); ``projector`` maps l1 to 512;
``classify`` is Linear(1536, classes). Init (``xavierUniform``): Xavier-uniform gain
sqrt(2), zero biases, BN scale U(0, 1).

The map evaluation reads (``attention.mean``) is the mean of the m distributions, each
bilinearly resized to the finest map's resolution and renormalised to sum 1, then scaled
per image to a maximum of 1: a mixture of the blocks' distributions, whose per-image
scale changes no ratio or ranking (energy in box, pointing game, deletion/insertion).
``attention.logit`` is its log (softmax of it over positions is the mixture). Each
block's own map is in ``attention_maps['a1'..]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import ModelOutput, NoiselessClassifier, deterministic_attention
from ib_attention_jax.models.conv import Conv
from ib_attention_jax.models.layers import BackboneModule, at_least_float32, max_pool, xavier_uniform_relu
from ib_attention_jax.models.vgg import ConvBNBlock

Array = jax.Array


class LinearAttention(nn.Module):
    """``c = op(L + g)`` (1x1 conv, no bias), ``a = softmax_positions(c)``, ``g_a = sum_positions a * L``."""

    kernel_init: Any = xavier_uniform_relu
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, local: Array, g: Array) -> tuple[Array, Array, Array]:
        b, h, w, c = local.shape
        chex.assert_shape(g, (b, c))
        scores = Conv(1, 1, padding=0, use_bias=False, kernel_init=self.kernel_init, impl=self.conv_impl,
                      dtype=self.dtype, name="op")(local + g[:, None, None, :])  # (b, h, w, 1)
        a = jax.nn.softmax(at_least_float32(scores).reshape(b, h * w), axis=-1).reshape(b, h, w, 1)
        pooled = jnp.sum(a * at_least_float32(local), axis=(1, 2))  # (b, c): a weighted sum (not a mean), >= f32
        return scores, a, pooled.astype(local.dtype)


def mixture_map(maps: Sequence[Array]) -> Array:
    """The mean of per-image distributions (b, h_i, w_i, 1) on the finest grid, scaled to a maximum of 1.

    Each map is resized bilinearly (half-pixel centres, as PyTorch's ``align_corners=False``),
    renormalised to sum 1 and averaged; the result (b, H, W, 1) is divided by its per-image maximum.
    """
    b = maps[0].shape[0]
    h, w = max((m.shape[1], m.shape[2]) for m in maps)
    resized = []
    for m in maps:
        m = at_least_float32(m)
        if m.shape[1:3] != (h, w):
            m = jax.image.resize(m, (b, h, w, 1), method="linear")
        resized.append(m / jnp.sum(m, axis=(1, 2, 3), keepdims=True))
    mean = sum(resized) / len(resized)  # (b, H, W, 1), sums to 1 per image
    return mean / jnp.max(mean, axis=(1, 2, 3), keepdims=True)


class LTPAClassifier(NoiselessClassifier):
    """trunk -> local maps and g -> one ``LinearAttention`` per map -> Linear on the concatenated ``g_i``.

    ``trunk(x, train)`` returns ``(locals, g)``: a tuple of (b, h_i, w_i, c_i) maps and the
    global feature (b, C). A map with c_i != C is first projected to C by ``projector{i}``
    (i = its 1-based position; the official model projects l1 only).
    ``features`` is the first map the attention reads (L_1, projected). ``num_samples`` and
    ``deterministic`` are accepted for the common call and change nothing (LTPA has no
    noise). Parity values (c_i, g_i, the projected maps, g) are sown in the
    ``intermediates`` collection (not at init).
    """

    trunk: nn.Module

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, num_samples: int = 1, deterministic: bool = False,
                 example_ids: Array | None = None) -> ModelOutput:
        del deterministic, example_ids
        self.check_call(x, num_samples)
        local_maps, g = self.trunk(x, train=train)
        width = g.shape[-1]
        record = (lambda name, value: None) if self.is_initializing() else (
            lambda name, value: self.sow("intermediates", name, value))
        record("g_dense", g)
        projected, maps, pooled = [], [], []
        for i, local in enumerate(local_maps, start=1):
            if local.shape[-1] != width:
                local = Conv(width, 1, padding=0, use_bias=False, kernel_init=xavier_uniform_relu,
                             impl=self.conv_impl, dtype=self.dtype, name=f"projector{i}")(local)
                record(f"l{i}_proj", local)
            c, a, g_i = LinearAttention(conv_impl=self.conv_impl, dtype=self.dtype, name=f"attn{i}")(local, g)
            record(f"c{i}", c)
            record(f"g{i}", g_i)
            projected.append(local)
            maps.append(a)
            pooled.append(g_i)
        logits = nn.Dense(self.num_classes, kernel_init=xavier_uniform_relu, dtype=self.dtype,
                          name="classify")(jnp.concatenate(pooled, axis=-1))
        mixture = mixture_map(maps)
        attention = deterministic_attention(jnp.log(mixture), mixture, num_samples)
        return ModelOutput(logits=at_least_float32(logits), features=projected[0], attention=attention,
                           attention_maps={f"a{i}": a[..., 0] for i, a in enumerate(maps, start=1)})


class LTPAVGGTrunk(BackboneModule):
    """The ``AttnVGG_before`` trunk: (l1, l2, l3) before their pools and g = dense(block6(...)) (b, 512)."""


    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[tuple[Array, Array, Array], Array]:
        kw = self.settings
        x = ConvBNBlock(64, 2, name="block1", **kw)(x, train)
        x = ConvBNBlock(128, 2, name="block2", **kw)(x, train)
        l1 = ConvBNBlock(256, 3, name="block3", **kw)(x, train)  # (b, 32, 32, 256)
        l2 = ConvBNBlock(512, 3, name="block4", **kw)(max_pool(l1, 2), train)  # (b, 16, 16, 512)
        l3 = ConvBNBlock(512, 3, name="block5", **kw)(max_pool(l2, 2), train)  # (b, 8, 8, 512)
        x = ConvBNBlock(512, 2, pool_each=True, name="block6", **kw)(max_pool(l3, 2), train)  # (b, 1, 1, 512)
        if not self.is_initializing():
            for name, value in (("l1", l1), ("l2", l2), ("l3", l3), ("block6_out", x.reshape(x.shape[0], -1))):
                self.sow("intermediates", name, value)
        # The official "dense" conv: kernel im_size/32, i.e. the whole remaining map.
        g = Conv(512, x.shape[1], padding=0, kernel_init=xavier_uniform_relu, impl=self.conv_impl, dtype=self.dtype,
                 name="dense")(x)
        return (l1, l2, l3), g.reshape(g.shape[0], -1)


def ltpa_vgg(num_classes: int = 10, *, conv_impl: str = "auto", bn_axis_name: str | None = None, dtype: Any = None,
             image_size: int = 32, model_name: str = "ltpa_vgg") -> LTPAClassifier:
    """The public ``AttnVGG_before(im_size=32, attention=True, normalize_attn=True)``."""
    trunk = LTPAVGGTrunk(conv_impl=conv_impl, bn_axis_name=bn_axis_name, dtype=dtype)
    return LTPAClassifier(trunk, num_classes=num_classes, conv_impl=conv_impl, dtype=dtype, image_size=image_size,
                          model_name=model_name)
