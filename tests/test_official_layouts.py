"""Official checkpoint layouts (VGG, WRN, CUB scripts): what they hold, bitwise round trips, the scripts' access paths.

The numpy tests build and read the layouts without torch; the torch tests write real files, read
them back the way each official script does (DataParallel model, ``load_state_dict(strict=True)``,
the optimiser's ``load_state_dict``, the bookkeeping keys) and compare with the input file bitwise.
"""

import argparse

import numpy as np
import pytest
from flax import traverse_util
from weight_checks import (
    assert_state_dicts_bitwise_equal,
    assert_trees_bitwise_equal,
    numpy_state_dict,
    parity_manifest,
    parity_state_dict,
    random_variables,
    torch_state_dict,
)

from ib_attention_jax.interop.export import official_checkpoint_for, official_module_state_dict
from ib_attention_jax.interop.naming import FAMILIES
from ib_attention_jax.interop.official_layouts import (
    OfficialLayoutError,
    optimizer_state,
    parameter_count,
    read_layout,
    script_for,
)
from ib_attention_jax.interop.state_dict import from_state_dict, to_state_dict, variable_shapes
from ib_attention_jax.models.registry import create_model, get_spec

TORCH_REASON = "PyTorch is the optional extra (make torch)"


def _group_sizes(optim):
    return [len(g["params"]) for g in optim["param_groups"]]


# -- numpy: the layouts themselves ------------------------------------------------------------------
@pytest.mark.parametrize("script", ["vgg", "wrn", "cub"])
def test_each_layout_holds_what_its_script_reads_and_round_trips(script):
    model = create_model("small_aib_qt", conv_impl="xla")
    variables = random_variables(model, seed=4)
    ema = random_variables(model, seed=5) if script == "cub" else None
    _, obj = official_checkpoint_for(model, variables, script, ema_variables=ema, epoch=7, step=700, accuracy=0.9)
    contents = read_layout(obj)
    assert contents.layout == script
    prefix = "module." if script in ("vgg", "wrn") else ""
    assert all(k.startswith(prefix) for k in contents.net)
    assert_trees_bitwise_equal(from_state_dict(model, contents.net), variables)
    if script == "vgg":
        assert set(obj) == {"epoch", "model_states", "optim_states", "test_acc", "test_loss"}
        assert obj["epoch"] == 7 and obj["test_acc"] == pytest.approx(90.0)  # the script's percentages
        optim = obj["optim_states"]["optim"]
    elif script == "wrn":
        assert set(obj) == {"epoch", "state_dict", "acc", "best_acc", "optimizer", "amp"}
        assert obj["epoch"] == 7 and obj["best_acc"] == pytest.approx(90.0)
        assert obj["amp"] == {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}
        optim = obj["optimizer"]
    else:
        assert set(obj) == {"iter", "epoch", "history", "model_states", "optim_states"}
        assert (obj["iter"], obj["epoch"]) == (700, 7)
        assert obj["history"]["avg_acc"] == pytest.approx(0.9) and obj["history"]["iter"] == 700
        assert {"vq_loss", "commit_loss", "qt_loss", "avg_acc_ema"} <= set(obj["history"])
        assert_trees_bitwise_equal(from_state_dict(model, contents.net_ema), ema)
        optim = obj["optim_states"]["optim"]
    n = parameter_count(to_state_dict(model, variables), "small")
    assert optim["state"] == {} and sum(_group_sizes(optim)) == n


def test_optimizer_groups_follow_each_official_script():
    # VGG QT: the anchor group is built from 'emb.weight' but DataParallel names it 'module.emb.weight': empty.
    assert _group_sizes(optimizer_state("vgg", 60, True, 0.01)) == [60, 0]
    assert _group_sizes(optimizer_state("wrn", 60, True, 0.1)) == [59, 1]  # the anchors at lr * 1e-4
    assert optimizer_state("wrn", 60, True, 0.1)["param_groups"][1]["lr"] == pytest.approx(1e-5)
    assert _group_sizes(optimizer_state("cub", 60, True, 1e-4)) == [60]  # one Adam group, frozen anchors in it
    assert optimizer_state("cub", 60, False, 1e-4)["param_groups"][0]["betas"] == (0.5, 0.999)
    assert [g["params"] for g in optimizer_state("vgg", 3, True, 1)["param_groups"]] == [[0, 1, 2], []]


def test_official_parameter_counts_match_the_fixture_classes():
    families = {"vgg_aib_qt20_cifar10": "vgg", "wrn_aib_cifar10": "wrn", "cub_vgg16_aib": "cub_vgg16",
                "cub_wrn50_2_aib_qt20": "cub_wrn50_2"}
    buffers = (".running_mean", ".running_var", ".num_batches_tracked")
    for name, family in families.items():
        m = parity_manifest(name)
        expected = sum(1 for k, _, _ in m["state_dict"] if not k.endswith(buffers) and k not in m.get("aliases", {}))
        assert parameter_count(dict.fromkeys(k for k, _, _ in m["state_dict"]), family) == expected, name


def test_cub_wrn50_2_export_holds_every_key_of_the_official_class():
    """VaNet_wrn's strict load_state_dict wants its unused tmp_layer too: written neutral (or passed through)."""
    model = create_model("cub_wrn50_2_aib_qt")
    flat = traverse_util.flatten_dict(dict(variable_shapes(model)))
    zeros = traverse_util.unflatten_dict({p: np.broadcast_to(np.zeros((), s.dtype), s.shape) for p, s in flat.items()})
    manifest = parity_manifest("cub_wrn50_2_aib_qt20")
    sd = official_module_state_dict(model, zeros)
    assert set(sd) == {k for k, _, _ in manifest["state_dict"]}
    for key, shape, dtype in manifest["state_dict"]:
        assert sd[key].shape == tuple(shape) and sd[key].dtype == np.dtype(dtype), key
    assert np.all(sd["tmp_layer.3.bn2.running_var"] == 1) and not np.any(sd["tmp_layer.0.conv2.weight"])
    given = {"tmp_layer.5.conv3.weight": np.full((1024, 512, 1, 1), 0.5, np.float32)}
    assert np.all(official_module_state_dict(model, zeros, given)["tmp_layer.5.conv3.weight"] == 0.5)
    with pytest.raises(ValueError, match="tmp_layer.5.conv3.weight has shape"):
        official_module_state_dict(model, zeros, {"tmp_layer.5.conv3.weight": np.zeros(3)})


def test_models_without_an_official_script_are_refused():
    for name in ("small_aib", "vgg_plain", "cub_wrn50_2_plain"):
        spec = get_spec(name)
        with pytest.raises(OfficialLayoutError, match="not an official model.*save_official_checkpoint"):
            script_for(spec.name, spec.family, spec.plain)
    model = create_model("small_aib")
    with pytest.raises(OfficialLayoutError, match="VGG script keeps no EMA"):
        official_checkpoint_for(model, random_variables(model), "vgg", ema_variables=random_variables(model))
    assert script_for("cub_wrn50_2_aib", "cub_wrn50_2", False) == "cub" and set(FAMILIES) >= {"vgg", "wrn"}


def test_read_layout_names_what_it_cannot_read():
    with pytest.raises(OfficialLayoutError, match=r"keys \['epoch'\].*'state_dict'.*'model_states'"):
        read_layout({"epoch": 3})
    with pytest.raises(OfficialLayoutError, match="not a checkpoint dictionary but a list"):
        read_layout([1, 2])
    with pytest.raises(OfficialLayoutError, match="no 'net' state_dict"):
        read_layout({"model_states": {"net_ema": {}}})


# -- torch: real files through each script's access path ---------------------------------------------
def _load(path):
    import torch

    return torch.load(path, weights_only=True)  # exported files hold tensors, containers and numbers only


def _round_trip(tmp_path, model, official_in, **export):
    """IN file -> init_from -> variables -> export_official -> OUT (torch.load'ed); and the import report."""
    import torch

    from ib_attention_jax.interop.export import export_official
    from ib_attention_jax.interop.init_from import load_init_weights_and_ema

    path_in, path_out = tmp_path / "in.tar", tmp_path / "out.tar"
    torch.save(official_in, path_in)
    variables, ema, report = load_init_weights_and_ema(path_in, model, random_variables(model, seed=9))
    assert report.num_kept == 0 and report.ignored == (), report.format()
    assert (ema is not None) == export.pop("ema", False)
    summary = export_official(model, variables, path_out, **export, ema_variables=ema, passthrough=report.passthrough)
    assert summary.path == str(path_out) and summary.ema == (ema is not None)
    return _load(path_out), report


def test_vgg_best_acc_tar_round_trips_bitwise(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from experiments.support.torch_models import VGGAIB

    fresh = torch.nn.DataParallel(VGGAIB(10, K=256))  # the script wraps the model whenever CUDA is there
    optimizer = torch.optim.SGD(fresh.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
    net = torch_state_dict(parity_state_dict("vgg_aib_cifar10"), "module.")  # in the official class's key order
    official = {"epoch": 37, "args": argparse.Namespace(lr=0.01), "model_states": {"net": net},
                "optim_states": {"optim": optimizer.state_dict()}, "test_acc": 93.5, "test_loss": 0.31}
    out, report = _round_trip(tmp_path, create_model("vgg_aib", 10), official, epoch=37, accuracy=0.935)
    assert report.info == {"layout": "vgg", "epoch": 37, "test_acc": 93.5, "test_loss": 0.31}
    # what cifar_va.py reads: epoch, model_states.net (strict, DataParallel), optim_states.optim, test_acc
    assert_state_dicts_bitwise_equal(numpy_state_dict(out["model_states"]["net"]), numpy_state_dict(net))
    fresh.load_state_dict(out["model_states"]["net"])
    optimizer.load_state_dict(out["optim_states"]["optim"])
    assert out["epoch"] == 37 and out["test_acc"] == pytest.approx(93.5)


def test_wrn_checkpoint_pth_tar_round_trips_bitwise_and_loads_into_the_script(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from experiments.support.torch_models import WideResNetAIB

    def script_model():  # the WRN-QT script: the optimiser on the bare model, then DataParallel
        model = WideResNetAIB(10, depth=10, widen_factor=2, K=16, qt_num=50)
        names = ["emb.weight", "module.emb.weight"]
        params = [p for n, p in model.named_parameters() if n in names]
        base = [p for n, p in model.named_parameters() if n not in names]
        optimizer = torch.optim.SGD([{"params": base}, {"params": params, "lr": 1e-5}], lr=0.1, momentum=0.9,
                                    weight_decay=5e-4)
        return torch.nn.DataParallel(model), optimizer

    net, optimizer = script_model()
    official = {"epoch": 61, "state_dict": net.state_dict(), "acc": 80.0, "best_acc": 81.5,
                "optimizer": optimizer.state_dict(), "amp": {"loss_scaler0": {"loss_scale": 1024.0, "unskipped": 7}}}
    model = create_model("wrn_aib_qt", 10, depth=10, widen=2, latent_dim=16)
    out, report = _round_trip(tmp_path, model, official, epoch=61, accuracy=0.815)
    assert report.info == {"layout": "wrn", "epoch": 61, "acc": 80.0, "best_acc": 81.5}
    assert_state_dicts_bitwise_equal(numpy_state_dict(out["state_dict"]), numpy_state_dict(official["state_dict"]))
    fresh, fresh_optimizer = script_model()
    fresh.load_state_dict(out["state_dict"])  # strict: aliases and counters included
    fresh_optimizer.load_state_dict(out["optimizer"])
    assert out["epoch"] == 61 and out["best_acc"] == pytest.approx(81.5) and "loss_scaler0" in out["amp"]


def test_cub_best_acc_tar_round_trips_net_and_net_ema_bitwise(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from ib_attention_jax.interop.fixture_weights import synthetic_state_dict

    manifest = parity_manifest("cub_vgg16_aib")
    net = torch_state_dict(parity_state_dict("cub_vgg16_aib"))
    ema = torch_state_dict(synthetic_state_dict(manifest["state_dict"], 1, {}, manifest["weight_gain"]))
    history = {"avg_acc": 0.7, "avg_acc_ema": 0.71, "epoch": 10, "iter": 5000}
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(36)]  # VaNet_vgg: 13 + 5 layers, weight and bias
    official = {"iter": 5000, "epoch": 10, "history": history, "args": argparse.Namespace(K=256),
                "model_states": {"net": net, "net_ema": ema},
                "optim_states": {"optim": torch.optim.Adam(params, 1e-4, betas=(0.5, 0.999)).state_dict()}}
    out, report = _round_trip(tmp_path, create_model("cub_vgg16_aib"), official, ema=True, epoch=10, step=5000,
                              accuracy=0.71)
    assert report.info == {"layout": "cub", "epoch": 10, "iter": 5000}
    # what solver.load_checkpoint reads: epoch, iter, history, both nets (strict), optim_states.optim
    assert (out["epoch"], out["iter"]) == (10, 5000) and out["history"]["avg_acc"] == pytest.approx(0.71)
    assert_state_dicts_bitwise_equal(numpy_state_dict(out["model_states"]["net"]), numpy_state_dict(net))
    assert_state_dicts_bitwise_equal(numpy_state_dict(out["model_states"]["net_ema"]), numpy_state_dict(ema))
    torch.optim.Adam(params, 1e-4, betas=(0.5, 0.999)).load_state_dict(out["optim_states"]["optim"])


def test_the_vgg_qt_optimizer_state_loads_into_the_scripts_own_optimizer(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from experiments.support.torch_models import VGGAIB
    from ib_attention_jax.interop.export import export_official

    net = torch.nn.DataParallel(VGGAIB(10, K=256, qt_num=20))
    anchors = [p for n, p in net.named_parameters() if n in ["emb.weight"]]  # the script's filter: matches nothing
    base = [p for n, p in net.named_parameters() if n not in ["emb.weight"]]
    optimizer = torch.optim.SGD([{"params": base}, {"params": anchors, "lr": 1e-6}], lr=0.01, momentum=0.9)
    model = create_model("vgg_aib_qt", 10)
    export_official(model, random_variables(model), tmp_path / "best_acc.tar")
    out = _load(tmp_path / "best_acc.tar")
    net.load_state_dict(out["model_states"]["net"])
    optimizer.load_state_dict(out["optim_states"]["optim"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
