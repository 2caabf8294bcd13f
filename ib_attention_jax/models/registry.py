"""Models by name: the official AIB models, their plain and attention baselines (LTPA, ABN), small quickstart models."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from ib_attention_jax.models import abn, cub, ltpa, small, vgg, wrn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the rest of the library needs to know about a registered model."""

    name: str
    builder: Callable[..., nn.Module]
    family: str  # weight-naming family: vgg, wrn, cub_vgg16, cub_wrn50_2, ltpa_vgg, abn_wrn, small
    image_size: int
    num_classes: int  # default class count
    num_anchors: int = 0  # default anchor count (0: no quantiser)
    info_factor: float = 1.0  # the official c in beta * c * KL
    plain: bool = False
    baseline: bool = False  # an attention baseline (LTPA, ABN): attention maps, no bottleneck, no anchors
    description: str = ""

    @property
    def quantized(self) -> bool:
        return self.num_anchors > 0


_SPECS = [
    ModelSpec("vgg_aib", vgg.vgg_aib, "vgg", 32, 10, 0, 0.5,
              description="LTPA VGG, attention at 16x16, K=256 (official Vgg16_bn_lrn_VANet)"),
    ModelSpec("vgg_aib_qt", vgg.vgg_aib, "vgg", 32, 10, 20, 0.5,
              description="vgg_aib with 20 anchors (50 for CIFAR-100)"),
    ModelSpec("wrn_aib", wrn.wrn_aib, "wrn", 32, 10, 0, 1.0,
              description="WRN-28-10, dropout 0.3, ABN-style head, K=512 (official WideResNet)"),
    ModelSpec("wrn_aib_qt", wrn.wrn_aib, "wrn", 32, 10, 50, 1.0,
              description="wrn_aib with 50 anchors (20 for CIFAR-100)"),
    ModelSpec("cub_vgg16_aib", cub.cub_vgg16_aib, "cub_vgg16", 224, 200, 0, 1.0,
              description="VGG-16 at 224x224, attention at 14x14, K=256 (official VaNet_vgg)"),
    ModelSpec("cub_vgg16_aib_qt", cub.cub_vgg16_aib, "cub_vgg16", 224, 200, 20, 1.0,
              description="cub_vgg16_aib with the deeper QT mean head and 20 anchors"),
    ModelSpec("cub_wrn50_2_aib", cub.cub_wrn50_2_aib, "cub_wrn50_2", 224, 200, 0, 1.0,
              description="Wide ResNet-50-2 at 224x224, attention at 14x14, K=256 (official VaNet_wrn)"),
    ModelSpec("cub_wrn50_2_aib_qt", cub.cub_wrn50_2_aib, "cub_wrn50_2", 224, 200, 20, 1.0,
              description="cub_wrn50_2_aib with 20 anchors"),
    ModelSpec("small_aib", small.small_aib, "small", 32, 10, 0, 1.0,
              description="~125k-parameter AIB model for quickstarts and tests, K=64"),
    ModelSpec("small_aib_qt", small.small_aib, "small", 32, 10, 8, 1.0,
              description="small_aib with 8 anchors"),
    ModelSpec("vgg_plain", vgg.vgg_plain, "vgg", 32, 10, plain=True,
              description="baseline: the LTPA VGG without attention and bottleneck"),
    ModelSpec("wrn_plain", wrn.wrn_plain, "wrn", 32, 10, plain=True,
              description="baseline: WRN-28-10, dropout 0.3"),
    ModelSpec("cub_vgg16_plain", cub.cub_vgg16_plain, "cub_vgg16", 224, 200, plain=True,
              description="baseline: VGG-16 features, 3x3 pool, Linear"),
    ModelSpec("cub_wrn50_2_plain", cub.cub_wrn50_2_plain, "cub_wrn50_2", 224, 200, plain=True,
              description="baseline: Wide ResNet-50-2"),
    ModelSpec("small_plain", small.small_plain, "small", 32, 10, plain=True,
              description="baseline: small_aib without attention and bottleneck"),
    ModelSpec("ltpa_vgg", ltpa.ltpa_vgg, "ltpa_vgg", 32, 10, baseline=True,
              description="baseline: LTPA AttnVGG_before, softmax attention at 32, 16, 8 px (Jetley et al.)"),
    ModelSpec("abn_wrn", abn.abn_wrn, "abn_wrn", 32, 10, baseline=True,
              description="baseline: ABN WRN-28-10, dropout 0.3, sigmoid map at 16x16 (Fukui et al.)"),
    ModelSpec("small_ltpa", small.small_ltpa, "small", 32, 10, baseline=True,
              description="baseline: LTPA on the small_aib convolutions, maps at 32, 16, 8 px"),
    ModelSpec("small_abn", small.small_abn, "small", 32, 10, baseline=True,
              description="baseline: ABN on the small_aib backbone, map at 16x16"),
]
MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_models() -> list[str]:
    """Names of every registered model."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(MODELS)}") from None


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds a registered model.

    ``num_classes`` defaults to the spec's; ``num_anchors`` (QT models) defaults to the
    spec's; any other keyword (``latent_dim``, ``conv_impl``, ``bn_axis_name``,
    ``dtype``, ``dropout_rate``, ``anchor_init``...) goes to the builder.
    """
    spec = get_spec(name)
    classes = spec.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {classes}")
    if spec.plain or spec.baseline:
        for key in ("num_anchors", "latent_dim", "anchor_init"):
            if key in kwargs:
                kind = "an attention baseline" if spec.baseline else "a plain classifier"
                raise ValueError(f"{name} is {kind}: it has no {key}")
    else:
        kwargs.setdefault("num_anchors", spec.num_anchors)
        if spec.quantized and kwargs["num_anchors"] < 1:
            raise ValueError(f"{name} quantises attention: num_anchors must be >= 1")
        if not spec.quantized and kwargs["num_anchors"]:
            raise ValueError(f"{name} has no quantiser; use {name}_qt for anchors")
    _check_options(spec, kwargs)
    return spec.builder(classes, model_name=name, **kwargs)


def _check_options(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    """An unknown keyword is a ValueError naming it and the builder's options.

    Checked against the builder's signature rather than by catching TypeError, which
    would also turn a bug inside a builder into "invalid option".
    """
    params = inspect.signature(spec.builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    options = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if unknown := sorted(set(kwargs) - set(options)):
        raise ValueError(f"invalid option for {spec.name}: {', '.join(unknown)}; "
                         f"it takes {', '.join(o for o in options if o != 'model_name')}")
