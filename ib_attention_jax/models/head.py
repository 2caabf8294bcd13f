"""``AIBHead``: what AIB adds, on the feature map of any backbone.

The backbone is the user's own Flax code; the head takes its feature map (b, h, w, c) and runs
the variational attention, the optional anchors, the modulation ``f + f * a``, the stochastic
latent and a decoder (:func:`~ib_attention_jax.models.aib.attend_and_decode`, the same pipeline
as the registered models)::

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False, **head_kwargs):
            f = MyBackbone()(x, train)                      # (b, h, w, c), any Flax code
            return AIBHead(latent_dim=64, num_classes=10)(f, train=train, **head_kwargs)

Every part has a default that a module of the user's replaces: the attention (the official one
3x3 conv mean head), the encoder (global average pool, Dense to 2K) and the decoder (the official
MLP, Linear K->K, ReLU, Linear K->classes; ``num_classes=0`` and no decoder: the head stops at the
latent, ``out.latent``). ``out.logits`` is averaged over the n x n samples, and
``objectives.aib_loss`` takes the output as it takes a registered model's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.aib import ModelOutput, attend_and_decode
from ib_attention_jax.models.attention import ConvMeanHead, VariationalAttention
from ib_attention_jax.models.bottleneck import GaussianLatent, MLPDecoder
from ib_attention_jax.models.quantization import AnchorQuantizer

Array = jax.Array


class GlobalPoolEncoder(nn.Module):
    """The default encoder: global average pool of the modulated features, Dense to ``out_dim`` (2K)."""

    out_dim: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        return nn.Dense(self.out_dim, name="fc")(jnp.mean(x, axis=(1, 2)))  # (rows, h, w, c) -> (rows, out_dim)


class AIBHead(nn.Module):
    """Variational attention (-> anchors) -> modulation -> Gaussian latent (-> decoder) on a feature map.

    ``latent_dim`` is K; ``num_classes`` sizes the default decoder (0 with no ``decoder``: no decoder,
    the output stops at the latent). ``num_anchors > 0`` quantises the attention values to that many
    learnable anchors (AIB-QT). ``attention``, ``encoder`` and ``decoder`` replace the defaults:
    ``attention(f, num_samples=, deterministic=, train=, example_ids=)`` returns an ``AttentionOutput``
    (e.g. ``VariationalAttention(my_mean_head)``), ``encoder(rows, train=)`` maps (n*b, h, w, c) to
    (n*b, 2K) and ``decoder(z, train=)`` maps (n_z, n_a, b, K) to logits. Parameters are at
    ``attention/...``, ``quantizer``, ``encoder/...``, ``latent`` and ``decoder/...``. A replacement
    part built inside the caller's compact method belongs to the caller (Flax's rule for modules passed
    as attributes: its parameters sit beside the head); build it with ``parent=None`` (or outside any
    module) to nest it under the head.

    Noise comes from the ``attention`` and ``latent`` RNG streams; ``deterministic=True`` is the
    zero-noise mean path, which needs none.
    """

    latent_dim: int
    num_classes: int = 0
    num_anchors: int = 0
    anchor_init: str = "linspace"
    attention: nn.Module | None = None
    encoder: nn.Module | None = None
    decoder: nn.Module | None = None

    @nn.compact
    def __call__(self, features: Array, *, train: bool = False, num_samples: int = 1, deterministic: bool = False,
                 example_ids: Array | None = None) -> ModelOutput:
        if features.ndim != 4:
            raise ValueError(f"AIBHead takes a feature map (batch, height, width, channels), got shape "
                             f"{tuple(features.shape)}; reshape a flat (batch, d) feature to (batch, 1, 1, d) "
                             "only if one attention value per example is what you want")
        if self.latent_dim < 1 or self.num_classes < 0:
            raise ValueError(f"AIBHead needs latent_dim >= 1 and num_classes >= 0, got latent_dim="
                             f"{self.latent_dim}, num_classes={self.num_classes}")
        attention = self.attention or VariationalAttention(ConvMeanHead(parent=None), name="attention")
        encoder = self.encoder or GlobalPoolEncoder(2 * self.latent_dim, name="encoder")
        decoder = self.decoder
        if decoder is None and self.num_classes:
            decoder = MLPDecoder(self.num_classes, name="decoder")
        quantizer = AnchorQuantizer(self.num_anchors, self.anchor_init, name="quantizer") if self.num_anchors else None
        return attend_and_decode(features, attention=attention, encoder=encoder,
                                 latent=GaussianLatent(self.latent_dim, name="latent"), decoder=decoder,
                                 quantizer=quantizer, num_samples=num_samples, deterministic=deterministic,
                                 train=train, example_ids=example_ids)


__all__ = ["AIBHead", "GlobalPoolEncoder"]
