"""torchvision ImageNet state_dicts (vgg16, wide_resnet50_2) loaded into the CUB models' backbones.

The key lists and forward references are in fixtures/torchvision_backbones/ (torchvision 0.28,
synthetic weights by the parity fixtures' recipe, so equal names get equal values). The
state_dicts here are rebuilt from those key lists with the project's own generator.
"""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest
from weight_checks import assert_trees_bitwise_equal, random_variables

from ib_attention_jax.interop.fixture_weights import synthetic_state_dict
from ib_attention_jax.interop.init_from import load_state_dict_init
from ib_attention_jax.interop.state_dict import StateDictError
from ib_attention_jax.interop.torchvision import BACKBONES, detect_backbone
from ib_attention_jax.models.cub import ResNetStage, VGG16Front, WRN50Front
from ib_attention_jax.models.registry import create_model

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "torchvision_backbones"
TOL = 2e-5  # normwise, the parity fixtures' rule


@functools.cache
def manifest(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


@functools.cache
def torchvision_state_dict(name):
    """The torchvision-shaped state_dict: synthetic backbone; the ImageNet classifier as zero views.

    The classifier (classifier.* of vgg16: 120M values; fc.* of wide_resnet50_2) is never
    loaded, so its values do not matter; its keys and shapes are torchvision's.
    """
    m = manifest(name)
    head = BACKBONES[name].head
    body = [e for e in m["state_dict"] if e[0].split(".")[0] not in head]
    ref = m["reference"]
    sd = synthetic_state_dict(body, ref["seed"], {}, float(ref["weight_gain"]))
    for key, shape, dtype in m["state_dict"]:
        if key.split(".")[0] in head:
            sd[key] = np.broadcast_to(np.zeros((), dtype), tuple(shape))
    assert list(sd) != [] and set(sd) == {e[0] for e in m["state_dict"]}
    return sd


@functools.cache
def references(name):
    with np.load(FIXTURES / manifest(name)["reference"]["npz"]["file"]) as data:
        return {k: data[k] for k in data.files}


def reference_input():
    x = np.random.default_rng(1000).standard_normal((2, 3, 224, 224)).astype(np.float32)
    return x.transpose(0, 2, 3, 1)  # NHWC


def normwise(ours, ref):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def sub(variables, *path):
    """The variables of one submodule, for applying it alone."""
    out = {}
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection, {})
        for part in path:
            tree = tree.get(part, {})
        if tree:
            out[collection] = tree
    return out


@functools.cache
def loaded(model_name, backbone):
    model = create_model(model_name, conv_impl="xla")
    init = random_variables(model, seed=1)
    variables, report = load_state_dict_init(torchvision_state_dict(backbone), model, init,
                                             source=BACKBONES[backbone].weights_file)
    return model, init, variables, report


def test_torchvision_key_lists_are_detected():
    for name, backbone in BACKBONES.items():
        assert detect_backbone(dict.fromkeys(e[0] for e in manifest(name)["state_dict"])) is backbone
        assert backbone.weights_file in manifest(name)["imagenet_weights"]
    assert detect_backbone({"features.0.op.0.weight": 0}) is None  # an official CIFAR VGG key


def test_vgg16_imagenet_state_dict_loads_into_cub_vgg16_aib_and_reproduces_the_features():
    model, init, variables, report = loaded("cub_vgg16_aib", "vgg16")
    assert report.group_names("loaded") == ["front"] and report.num_loaded == 26
    assert report.group_names("kept") == ["attention", "decoder", "encoder"]
    assert report.ignored == (("classifier", 6),)
    assert "torchvision ImageNet vgg16" in report.format() and "kept at init" in report.format()
    for part in ("attention", "decoder", "encoder"):  # the rest keeps its initialisation
        assert_trees_bitwise_equal(sub(variables, part), sub(init, part))
    feats = jax.jit(lambda v, x: VGG16Front("xla").apply(v, x))(sub(variables, "front"), reference_input())
    assert feats.shape == (2, 14, 14, 512)
    err = normwise(feats[..., :64], references("vgg16")["features_nhwc_first64ch"])
    assert err <= TOL, err


def test_wide_resnet50_2_imagenet_state_dict_loads_into_cub_wrn50_2_aib_and_reproduces_layer3_and_layer4():
    model, init, variables, report = loaded("cub_wrn50_2_aib", "wide_resnet50_2")
    assert report.group_names("loaded") == ["encoder/layer4", "front"]
    assert report.group_names("kept") == ["attention", "decoder", "encoder/fc"]
    assert report.ignored == (("fc", 2),)
    assert report.num_loaded == sum(1 for e in manifest("wide_resnet50_2")["state_dict"] if not e[0].startswith("fc."))
    assert_trees_bitwise_equal(sub(variables, "attention"), sub(init, "attention"))
    front = jax.jit(lambda v, x: WRN50Front(conv_impl="xla").apply(v, x))(sub(variables, "front"), reference_input())
    stage = ResNetStage(512, 3, 2, conv_impl="xla")
    layer4 = jax.jit(lambda v, f: stage.apply(v, f))(sub(variables, "encoder", "layer4"), front)
    refs = references("wide_resnet50_2")
    assert front.shape == (2, 14, 14, 1024) and layer4.shape == (2, 7, 7, 2048)
    errors = (normwise(front[..., :64], refs["layer3_nhwc_first64ch"]),
              normwise(layer4[..., :64], refs["layer4_nhwc_first64ch"]))
    assert max(errors) <= TOL, errors


def test_the_qt_and_plain_cub_models_take_the_backbone_too():
    _, _, _, report = loaded("cub_wrn50_2_aib_qt", "wide_resnet50_2")
    assert "quantizer" in report.group_names("kept") and report.group_names("loaded") == ["encoder/layer4", "front"]
    _, _, _, report = loaded("cub_vgg16_plain", "vgg16")  # the baseline's own Linear is not ImageNet's
    assert report.group_names("loaded") == ["front"] and report.group_names("kept") == ["encoder"]


def test_a_torchvision_file_for_another_model_is_refused():
    with pytest.raises(StateDictError, match=r"torchvision vgg16 .*fits the cub_vgg16_\* models.*not cub_wrn50_2_aib"):
        load_state_dict_init(torchvision_state_dict("vgg16"), create_model("cub_wrn50_2_aib"), {})
    with pytest.raises(StateDictError, match=r"wide_resnet50_2 .*not wrn_aib"):
        load_state_dict_init(torchvision_state_dict("wide_resnet50_2"), create_model("wrn_aib"), {})


def test_torchvision_pth_file_loads_like_the_state_dict(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional extra (make torch)")
    from ib_attention_jax.interop.init_from import load_init_weights

    model, init, expected, _ = loaded("cub_wrn50_2_aib", "wide_resnet50_2")
    path = tmp_path / BACKBONES["wide_resnet50_2"].weights_file
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in torchvision_state_dict("wide_resnet50_2").items()}, path)
    variables, report = load_init_weights(path, model, init)
    assert report.group_names("loaded") == ["encoder/layer4", "front"] and str(path) in report.source
    assert_trees_bitwise_equal(variables, expected)
