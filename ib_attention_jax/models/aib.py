"""The AIB classifier: front -> variational attention (-> anchors) -> modulation -> VIB -> decoder.

Any backbone plugs in: ``front(x, train)`` gives the feature map the attention reads,
``encoder(f_att, train)`` gives the latent statistics (rows, 2K) and
``decoder(z, train)`` gives logits. The official models in ``vgg.py``, ``wrn.py`` and
``cub.py`` are instances of this one class.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_attention_jax.models.attention import AttentionOutput, VariationalAttention, modulate
from ib_attention_jax.models.bottleneck import GaussianLatent, LatentOutput
from ib_attention_jax.models.layers import at_least_float32
from ib_attention_jax.models.quantization import AnchorQuantizer, QuantizerOutput

Array = jax.Array


@chex.dataclass(frozen=True)
class ModelOutput:
    """What a forward pass returns. Attention fields are None for the plain classifiers.

    The attention baselines (``models/ltpa.py``, ``models/abn.py``) have no noise and no
    latent: their ``attention`` is a :func:`deterministic_attention` whose ``mean`` is the
    map evaluation scores, ``attention_maps`` holds each of their maps, and ABN's
    attention-branch logits are ``aux_logits`` (its objective adds their cross entropy).
    """

    logits: Array  # (b, classes), averaged over the n x n samples
    features: Array  # (b, h, w, c) the map the attention reads (the encoder input for plain models)
    attention: AttentionOutput | None = None
    attention_used: Array | None = None  # (n, b, h, w, 1) the map multiplied into the features
    quantizer: QuantizerOutput | None = None
    stats: Array | None = None  # (n*b, 2K) encoder output
    latent: LatentOutput | None = None  # mean/std (n*b, K), samples (n, n*b, K)
    sample_logits: Array | None = None  # (n_z, n_a, b, classes) before averaging
    aux_logits: Array | None = None  # (b, classes) an auxiliary classifier trained beside logits (ABN's branch)
    attention_maps: dict[str, Array] | None = None  # name -> (b, h, w): every map of a baseline (LTPA a1..a3)


def deterministic_attention(logit: Array, mean: Array, num_samples: int = 1) -> AttentionOutput:
    """The AttentionOutput of a map without noise: zero std, each of the n samples equal to ``mean``.

    ``logit`` and ``mean`` are (b, h, w, 1); samples are (n, b, h, w, 1).
    """
    zeros = jnp.zeros_like(mean)
    samples = jnp.broadcast_to(mean[None], (num_samples,) + mean.shape)
    return AttentionOutput(logit=logit, mean=mean, std_pre=zeros, std=zeros, samples=samples)


def check_images(x: Array, image_size: int | None, model_name: str) -> None:
    """Raises a ValueError naming the expected NHWC shape (or the conversion) when ``x`` does not fit the model."""
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise ValueError(
            f"{model_name} expects float images normalised like its training data, got {x.dtype}. Convert uint8 "
            "images with ib_attention_jax.data.normalize_images(images, NORMALIZATION) (x / 255, then the "
            "recipe's mean and std, e.g. 'cifar10'; see data/recipes.py NORMALIZATIONS).")
    expected = f"(batch, {image_size}, {image_size}, 3)" if image_size else "(batch, height, width, 3)"
    if x.ndim != 4 or x.shape[-1] != 3 or (image_size and tuple(x.shape[1:3]) != (image_size, image_size)):
        raise ValueError(
            f"{model_name} expects float NHWC images of shape {expected}, got {tuple(x.shape)}. "
            "Transpose NCHW input with x.transpose(0, 2, 3, 1) and resize images to the model's size.")


class AIBClassifier(nn.Module):
    """Variational-attention information-bottleneck classifier (optionally with anchors).

    Call with ``num_samples=n`` for the Monte-Carlo forward (n attention samples x n
    latent samples, logits averaged as the official code does) and
    ``deterministic=True`` for the zero-noise mean path. ``train`` switches BatchNorm
    to batch statistics and turns dropout on. ``example_ids`` (b,) makes the attention
    and latent noise a function of (key, example id) only, so a batch split over any
    number of devices draws the same noise.
    """

    front: nn.Module
    attention: VariationalAttention
    encoder: nn.Module
    decoder: nn.Module
    latent_dim: int
    num_anchors: int = 0  # 0: no quantiser
    anchor_init: str = "linspace"
    image_size: int | None = None
    model_name: str = "AIBClassifier"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, num_samples: int = 1,
                 deterministic: bool = False, example_ids: Array | None = None) -> ModelOutput:
        check_images(x, self.image_size, self.model_name)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        b, n, k = x.shape[0], num_samples, self.latent_dim
        features = self.front(x, train=train)
        att = self.attention(features, num_samples=n, deterministic=deterministic, train=train,
                             example_ids=example_ids)
        used, quant = att.samples, None
        if self.num_anchors:
            quant = AnchorQuantizer(self.num_anchors, self.anchor_init, name="quantizer")(att.samples)
            used = quant.quantized
        stats = self.encoder(modulate(features, used), train=train)  # (n*b, 2K)
        chex.assert_shape(stats, (n * b, 2 * k))
        latent = GaussianLatent(k, name="latent")(stats, num_samples=n, deterministic=deterministic,
                                                  example_ids=example_ids)
        z = latent.samples.reshape(n, n, b, k)  # (n_z, n_a, b, K), the official view
        sample_logits = at_least_float32(self.decoder(z, train=train))
        logits = sample_logits.mean(0).mean(0)
        return ModelOutput(logits=logits, features=features, attention=att, attention_used=used,
                           quantizer=quant, stats=stats, latent=latent, sample_logits=sample_logits)


class PlainClassifier(nn.Module):
    """The same backbone without attention and bottleneck: front -> encoder -> logits.

    The encoder is built with ``out_dim = num_classes``, so its last layer classifies.
    ``num_samples`` and ``deterministic`` are accepted and ignored so that training
    and evaluation code can call every model the same way.
    """

    front: nn.Module
    encoder: nn.Module
    image_size: int | None = None
    model_name: str = "PlainClassifier"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, num_samples: int = 1,
                 deterministic: bool = False, example_ids: Array | None = None) -> ModelOutput:
        del num_samples, deterministic, example_ids
        check_images(x, self.image_size, self.model_name)
        features = self.front(x, train=train)
        logits = at_least_float32(self.encoder(features, train=train))
        return ModelOutput(logits=logits, features=features)


Model = Any  # AIBClassifier | PlainClassifier
