"""torchvision ImageNet state_dicts of ``vgg16`` and ``wide_resnet50_2`` for the CUB models' backbones.

The official CUB models keep torchvision's module names for their backbones (``VaNet_vgg``:
``features.*`` without the last max-pool; ``VaNet_wrn``: ``conv1``, ``bn1``, ``layer1-4``)
and start from ImageNet weights by copying every checkpoint entry whose name the model
also has. So the names are the contract: the ImageNet classifier (``classifier.*`` /
``fc.*``) is dropped, the backbone is loaded under its own names, and the attention
head, encoder head, decoder and anchors keep their initialisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ib_attention_jax.interop.state_dict import StateDictError

DOWNLOADS = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class TorchvisionBackbone:
    """One torchvision ImageNet model the CUB models are built on."""

    name: str  # torchvision's constructor
    family: str  # the naming family of the CUB models that use it
    weights_file: str  # torchvision's ImageNet checkpoint (IMAGENET1K_V1, the release the official runs used)
    modules: tuple[str, ...]  # first key components of its state_dict
    head: tuple[str, ...]  # the ImageNet classifier: never loaded
    markers: tuple[str, ...]  # keys only this model has

    @property
    def url(self) -> str:
        return DOWNLOADS + self.weights_file


BACKBONES = {
    "vgg16": TorchvisionBackbone("vgg16", "cub_vgg16", "vgg16-397923af.pth", ("features", "classifier"),
                                 ("classifier",), ("features.28.weight", "classifier.6.weight")),
    "wide_resnet50_2": TorchvisionBackbone(
        "wide_resnet50_2", "cub_wrn50_2", "wide_resnet50_2-95faca4d.pth",
        ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"), ("fc",),
        ("fc.weight", "layer4.2.conv3.weight")),
}


def detect_backbone(state_dict: Mapping[str, Any]) -> TorchvisionBackbone | None:
    """The torchvision model whose ImageNet state_dict this is, or None (an official or other state_dict)."""
    keys = set(state_dict)
    for backbone in BACKBONES.values():
        if set(backbone.markers) <= keys and all(k.split(".", 1)[0] in backbone.modules for k in keys):
            return backbone
    return None


def backbone_entries(state_dict: Mapping[str, Any], backbone: TorchvisionBackbone, family: str,
                     model_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(backbone entries, ImageNet head entries)`` for a model of naming family ``family``.

    A torchvision file for another backbone (or a non-CUB model) is a StateDictError that
    says which models it fits.
    """
    if family != backbone.family:
        raise StateDictError(
            f"a torchvision {backbone.name} ImageNet state_dict fits the {backbone.family}_* models "
            f"(e.g. {backbone.family}_aib), not {model_name}: pick the matching config, or another init_from")
    head = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in backbone.head}
    return {k: v for k, v in state_dict.items() if k not in head}, head
