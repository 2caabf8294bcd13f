"""Where each Flax variable of a registered model lives in the official PyTorch state_dict.

Every family has an ordered list of rules mapping a Flax module path (``/``-joined,
e.g. ``front/block1/conv0``) to the official module name (``features.0.op.0``), the
official modules registered twice (aliases: both keys hold one tensor), and official
modules that are never used in forward (dead weights, ignored on import).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

Rule = tuple[str, str | Callable[[re.Match], str]]


def _vgg_conv_bn(base: str, pool_each: bool) -> Callable[[re.Match], str]:
    step = 4 if pool_each else 3  # conv, bn, relu (, pool)

    def name(m: re.Match) -> str:
        return f"{base(m) if callable(base) else base}.op.{step * int(m['j']) + (m['kind'] == 'bn')}"

    return name


_BLOCK_INTERNALS = [(r"layer(\d+)", r"layer.\1"), (r"block(\d+)", r"\1"),
                    (r"downsample_conv", "downsample.0"), (r"downsample_bn", "downsample.1")]


def _nested(prefix_from: str, prefix_to: str) -> Rule:
    """Maps ``prefix_from/<inner path>`` to ``prefix_to.<inner path with torch separators>``.

    ``prefix_to`` may refer to groups of ``prefix_from`` (``\\g<name>``).
    """

    def name(m: re.Match) -> str:
        parts = m["rest"].split("/")
        for i, part in enumerate(parts):
            for pat, rep in _BLOCK_INTERNALS:
                if re.fullmatch(pat, part):
                    parts[i] = re.sub(pat, rep, part)
                    break
        return f"{m.expand(prefix_to)}.{'.'.join(parts)}"

    return (rf"{prefix_from}/(?P<rest>.+)", name)


@dataclasses.dataclass(frozen=True)
class Family:
    """Naming of one model family; ``plain_rules`` replace ``rules`` for the plain baselines."""

    rules: list[Rule]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # alias prefix -> canonical prefix
    dead_prefixes: tuple[str, ...] = ()
    nchw_flatten: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # Linear -> pooled (h, w)
    plain_rules: list[Rule] = dataclasses.field(default_factory=list)


_VGG_FEATURES = (r"front/block(?P<b>[123])/(?P<kind>conv|bn)(?P<j>\d+)",
                 _vgg_conv_bn(lambda m: f"features.{int(m['b']) - 1}", False))
_VGG_ENC = [
    (r"encoder/block(?P<b>[45])/(?P<kind>conv|bn)(?P<j>\d+)",
     _vgg_conv_bn(lambda m: f"encode.{2 * (int(m['b']) - 4)}", False)),
    (r"encoder/block6/(?P<kind>conv|bn)(?P<j>\d+)", _vgg_conv_bn("encode.4", True)),
    (r"encoder/dense", "encode.5"),
]
VGG = Family(
    rules=[_VGG_FEATURES, *_VGG_ENC, (r"encoder/fc", "encode.8"),
           (r"attention/mean_head/conv", "att_module_mu.0"), (r"attention/std_conv", "att_module_std.0"),
           (r"decoder/fc1", "decode.0"), (r"decoder/fc2", "decode.2"), (r"quantizer", "emb")],
    plain_rules=[_VGG_FEATURES, *_VGG_ENC, (r"encoder/fc", "classifier")],
)

_WRN_FRONT = [(r"front/conv1", "conv1"), _nested("front/(?P<g>block[12])", r"\g<g>")]
_WRN_ENC = [_nested("encoder/block3", "block3"), (r"encoder/bn1", "bn1")]
WRN = Family(
    rules=[*_WRN_FRONT, _nested("attention/mean_head/att_block3", "att_block3"),
           (r"attention/mean_head/(?P<n>bn_att|att_conv|bn_att2|att_conv3|bn_att3)", lambda m: m["n"]),
           (r"attention/std_conv", "att_module_std.0"), *_WRN_ENC, (r"encoder/fc", "encode.5"),
           (r"decoder/fc", "decode.1"), (r"quantizer", "emb")],
    aliases={"encode.0.": "block3.", "encode.1.": "bn1.", "att_module_mu.0.": "att_block3.",
             "att_module_mu.1.": "bn_att.", "att_module_mu.2.": "att_conv.", "att_module_mu.3.": "bn_att2.",
             "att_module_mu.5.": "att_conv3.", "att_module_mu.6.": "bn_att3."},
    plain_rules=[*_WRN_FRONT, *_WRN_ENC, (r"encoder/fc", "fc")],
)

_VGG16_INDEX = {f"conv{s}_{i}": idx for (s, i), idx in zip(
    [(s + 1, i + 1) for s, n in enumerate((2, 2, 3, 3, 3)) for i in range(n)],
    [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], strict=True)}
_CUB_VGG_FRONT = (r"front/(?P<c>conv\d_\d)", lambda m: f"features.{_VGG16_INDEX[m['c']]}")
CUB_VGG16 = Family(
    rules=[_CUB_VGG_FRONT, (r"attention/mean_head/conv", "att_module_mu.0"),
           (r"attention/mean_head/conv(?P<i>\d)", lambda m: f"att_module_mu.{2 * int(m['i'])}"),
           (r"attention/std_conv", "att_module_std.0"), (r"encoder/fc", "encode.2"),
           (r"decoder/fc1", "decode.0"), (r"decoder/fc2", "decode.2"), (r"quantizer", "emb")],
    nchw_flatten={"encode.2": (3, 3), "classifier": (3, 3)},
    plain_rules=[_CUB_VGG_FRONT, (r"encoder/fc", "classifier")],
)

_CUB_WRN_FRONT = [(r"front/(?P<n>conv1|bn1)", lambda m: m["n"]), _nested("front/(?P<l>layer[123])", r"\g<l>")]
CUB_WRN50_2 = Family(
    rules=[*_CUB_WRN_FRONT,
           _nested("attention/mean_head/att_layer4", "att_layer4"),
           (r"attention/mean_head/conv", "att_module_mu.1"), (r"attention/std_conv", "att_module_std.0"),
           _nested("encoder/layer4", "layer4"), (r"encoder/fc", "encode.3"),
           (r"decoder/fc1", "decode.0"), (r"decoder/fc2", "decode.2"), (r"quantizer", "emb")],
    aliases={"encode.0.": "layer4.", "att_module_mu.0.": "att_layer4."},
    dead_prefixes=("tmp_layer.",),
    plain_rules=[*_CUB_WRN_FRONT, _nested("encoder/layer4", "layer4"), (r"encoder/fc", "fc")],
)

# LTPA: SaoYan/LearnToPayAttention's AttnVGG_before (conv_block{1-6}.op.*, dense, projector.op, attn{i}.op, classify).
LTPA_VGG = Family(rules=[
    (r"trunk/block(?P<b>[1-5])/(?P<kind>conv|bn)(?P<j>\d+)", _vgg_conv_bn(lambda m: f"conv_block{m['b']}", False)),
    (r"trunk/block6/(?P<kind>conv|bn)(?P<j>\d+)", _vgg_conv_bn("conv_block6", True)),
    (r"trunk/dense", "dense"), (r"projector1", "projector.op"), (r"(?P<a>attn[123])/op", lambda m: f"{m['a']}.op"),
    (r"classify", "classify"),
])
# ABN: the public attention_branch_network WideResNet (CIFAR): the AIB WRN names plus att_conv2 and fc.
ABN_WRN = Family(rules=[
    *_WRN_FRONT, _nested("branch/att_block3", "att_block3"),
    (r"branch/(?P<n>bn_att|att_conv|bn_att2|att_conv3|bn_att3)", lambda m: m["n"]), (r"att_conv2", "att_conv2"),
    _nested("perception/block3", "block3"), (r"perception/bn1", "bn1"), (r"perception/fc", "fc"),
])

SMALL = Family(rules=[(r"(?P<p>.+)", lambda m: m["p"].replace("/", "."))],
               plain_rules=[(r"(?P<p>.+)", lambda m: m["p"].replace("/", "."))])

FAMILIES: dict[str, Family] = {"vgg": VGG, "wrn": WRN, "cub_vgg16": CUB_VGG16, "cub_wrn50_2": CUB_WRN50_2,
                               "ltpa_vgg": LTPA_VGG, "abn_wrn": ABN_WRN, "small": SMALL}


def torch_module_name(family: Family, flax_path: str, plain: bool = False) -> str:
    """Official module name of the Flax module at ``flax_path``; KeyError if no rule matches."""
    for pattern, target in family.plain_rules if plain else family.rules:
        m = re.fullmatch(pattern, flax_path)
        if m:
            return target(m) if callable(target) else target
    raise KeyError(f"no official name for the Flax module {flax_path!r}")
