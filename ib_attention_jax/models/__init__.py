"""Flax modules of the AIB method and the registered models."""

from ib_attention_jax.models.aib import AIBClassifier, ModelOutput, PlainClassifier, attend_and_decode
from ib_attention_jax.models.attention import AttentionOutput, ConvMeanHead, VariationalAttention, modulate
from ib_attention_jax.models.bottleneck import GaussianLatent, LatentOutput, MLPDecoder, ReLULinearDecoder
from ib_attention_jax.models.conv import Conv, conv2d, conv2d_slices, conv2d_xla, resolve_conv_impl
from ib_attention_jax.models.head import AIBHead, GlobalPoolEncoder
from ib_attention_jax.models.quantization import AnchorQuantizer, QuantizerOutput, quantize
from ib_attention_jax.models.registry import MODELS, ModelSpec, create_model, get_spec, list_models

__all__ = [
    "AIBClassifier", "AIBHead", "AnchorQuantizer", "AttentionOutput", "Conv", "ConvMeanHead", "GaussianLatent",
    "GlobalPoolEncoder", "LatentOutput", "MLPDecoder", "MODELS", "ModelOutput", "ModelSpec", "PlainClassifier",
    "QuantizerOutput", "ReLULinearDecoder", "VariationalAttention", "attend_and_decode", "conv2d", "conv2d_slices",
    "conv2d_xla", "create_model", "get_spec", "list_models", "modulate", "quantize", "resolve_conv_impl",
]
