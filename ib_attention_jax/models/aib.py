"""The AIB classifier: front -> variational attention (-> anchors) -> modulation -> VIB -> decoder.

``front(x, train)`` gives the feature map the attention reads, ``encoder(f_att, train)`` the latent
statistics (rows, 2K) and ``decoder(z, train)`` the logits. The official models in ``vgg.py``,
``wrn.py`` and ``cub.py`` are instances of this one class; everything after the front is
:func:`attend_and_decode`, which ``models.AIBHead`` (any backbone's feature map) runs as well.
"""

from __future__ import annotations

import dataclasses
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

    logits: Array | None  # (b, classes), averaged over the n x n samples; None: an AIBHead without decoder
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
    """Raises a ValueError naming the expected NHWC shape (or the conversion) when ``x`` does not fit the model.

    Any channel count passes: the first convolution of every model takes its input width from the data
    (a 1-channel model is initialised on 1-channel images); weights made for 3 channels then refuse others.
    """
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise ValueError(
            f"{model_name} expects float images normalised like its training data, got {x.dtype}. Convert uint8 "
            "images with ib_attention_jax.data.normalize_images(images, NORMALIZATION) (x / 255, then the "
            "recipe's mean and std, e.g. 'cifar10'; see data/recipes.py NORMALIZATIONS).")
    expected = f"(batch, {image_size}, {image_size}, channels)" if image_size else "(batch, height, width, channels)"
    if x.ndim != 4 or (image_size and tuple(x.shape[1:3]) != (image_size, image_size)):
        raise ValueError(
            f"{model_name} expects float NHWC images of shape {expected}, got {tuple(x.shape)}. "
            "Transpose NCHW input with x.transpose(0, 2, 3, 1) and resize images to the model's size.")


def attend_and_decode(features: Array, *, attention: nn.Module, encoder: nn.Module, latent: GaussianLatent,
                      decoder: nn.Module | None, quantizer: AnchorQuantizer | None = None, num_samples: int = 1,
                      deterministic: bool = False, train: bool = False, example_ids: Array | None = None,
                      owner: str = "AIBHead") -> ModelOutput:
    """What AIB adds to a feature map, shared by :class:`AIBClassifier` and ``models.AIBHead``.

    features (b, h, w, c) -> ``attention`` (n samples) -> ``quantizer`` (anchors, optional) ->
    :func:`modulate` (n*b rows, sample-major) -> ``encoder`` (n*b, 2K) -> ``latent`` (n latent samples
    per row) -> ``decoder`` on (n_z, n_a, b, K), logits averaged over both sample axes as the official
    code does. ``decoder=None`` stops at the latent (``logits`` and ``sample_logits`` are None).

    Call it inside a module's compact ``__call__``: the submodules are that module's (its attributes, or
    built there with their names), so parameters sit at ``attention/...``, ``quantizer``,
    ``encoder/...``, ``latent``, ``decoder/...`` of the calling module.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    b, n, k = features.shape[0], num_samples, latent.latent_dim
    att = attention(features, num_samples=n, deterministic=deterministic, train=train, example_ids=example_ids)
    used, quant = att.samples, None
    if quantizer is not None:
        quant = quantizer(att.samples)
        used = quant.quantized
    stats = encoder(modulate(features, used), train=train)
    if stats.shape != (n * b, 2 * k):
        raise ValueError(
            f"{owner}: the encoder must map the modulated features ({n * b}, h, w, c) to latent statistics of "
            f"shape (rows, 2 * latent_dim) = ({n * b}, {2 * k}) (mean and pre-softplus std), got "
            f"{tuple(stats.shape)}; end it with a Dense(2 * latent_dim) on pooled features.")
    lat = latent(stats, num_samples=n, deterministic=deterministic, example_ids=example_ids)
    if decoder is None:
        return ModelOutput(logits=None, features=features, attention=att, attention_used=used, quantizer=quant,
                           stats=stats, latent=lat)
    z = lat.samples.reshape(n, n, b, k)  # (n_z, n_a, b, K), the official view
    sample_logits = at_least_float32(decoder(z, train=train))
    logits = sample_logits.mean(0).mean(0)
    return ModelOutput(logits=logits, features=features, attention=att, attention_used=used, quantizer=quant,
                       stats=stats, latent=lat, sample_logits=sample_logits)


class AIBClassifier(nn.Module):
    """Variational-attention information-bottleneck classifier (optionally with anchors).

    ``front(x, train)`` gives the feature map, then :func:`attend_and_decode` (the pipeline
    ``models.AIBHead`` runs too). Call with ``num_samples=n`` for the Monte-Carlo forward (n
    attention samples x n latent samples, logits averaged as the official code does) and
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
        quantizer = AnchorQuantizer(self.num_anchors, self.anchor_init, name="quantizer") if self.num_anchors else None
        return attend_and_decode(
            self.front(x, train=train), attention=self.attention, encoder=self.encoder,
            latent=GaussianLatent(self.latent_dim, name="latent"), decoder=self.decoder, quantizer=quantizer,
            num_samples=num_samples, deterministic=deterministic, train=train, example_ids=example_ids,
            owner=self.model_name)


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



class NoiselessClassifier(nn.Module):
    """Base of the attention baselines (ABN, LTPA): the settings and the input checks of their call.

    They take the AIB models' call (``num_samples``, ``deterministic``, ``example_ids``) so that
    training and evaluation call every model the same way; having no noise, they ignore it.
    """

    _: dataclasses.KW_ONLY
    num_classes: int
    conv_impl: str = "auto"
    dtype: Any = None
    image_size: int | None = None
    model_name: str = ""  # empty: the class name

    @nn.nowrap
    def check_call(self, x: Array, num_samples: int) -> None:
        """The images fit the model (:func:`check_images`) and ``num_samples >= 1``."""
        check_images(x, self.image_size, self.model_name or type(self).__name__)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
