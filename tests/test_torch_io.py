"""Official checkpoint files: the layout logic and file errors (numpy), the torch round trip (optional extra)."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest
from weight_checks import assert_trees_bitwise_equal, bits_equal, random_variables

from ib_attention_jax import create_model
from ib_attention_jax.interop import extract_state_dict, from_state_dict, strip_module_prefix, to_state_dict
from ib_attention_jax.interop.official_layouts import OfficialLayoutError
from ib_attention_jax.interop.torch_io import OfficialCheckpointError, read_checkpoint_object

TORCH_REASON = "PyTorch is the optional extra (make torch)"


def _sd():
    return {"a.weight": np.ones((2, 3), np.float32), "a.bias": np.zeros(2, np.float32)}


def test_extract_state_dict_from_every_official_layout():
    sd = _sd()
    assert extract_state_dict(sd).keys() == sd.keys()  # a bare state_dict
    assert extract_state_dict({"epoch": 3, "state_dict": sd, "best_acc": 0.9}).keys() == sd.keys()  # WRN
    assert extract_state_dict({"epoch": 3, "model_states": {"net": sd}, "test_acc": 91.0}).keys() == sd.keys()  # VGG
    cub = {"iter": 1, "model_states": {"net": sd, "net_ema": {"b.weight": np.ones(1)}}}
    assert extract_state_dict(cub).keys() == sd.keys()
    assert list(extract_state_dict(cub, which="net_ema")) == ["b.weight"]
    assert extract_state_dict({"model": sd}).keys() == sd.keys()  # a common non-official wrapper


def test_extract_state_dict_errors_name_what_is_there():
    with pytest.raises(OfficialLayoutError, match="epoch"):
        extract_state_dict({"epoch": 3})
    with pytest.raises(KeyError, match="net_ema"):
        extract_state_dict({"model_states": {"net": _sd()}}, which="net_ema")


def test_wrapper_prefixes_are_stripped_nested_and_in_any_order():
    for prefix in ("module.", "module.module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."):
        assert set(strip_module_prefix({prefix + k: v for k, v in _sd().items()})) == set(_sd()), prefix
    partial = {"module.a.weight": 1, "a.bias": 2}  # not every key: not a wrapper's prefix
    assert strip_module_prefix(partial) == partial


def test_torch_compile_and_double_dataparallel_state_dicts_load():
    model = create_model("small_aib_qt")
    variables = random_variables(model, seed=1)
    sd = to_state_dict(model, variables)
    for prefix in ("module.module.", "_orig_mod.", "module._orig_mod."):
        assert_trees_bitwise_equal(from_state_dict(model, {prefix + k: v for k, v in sd.items()}), variables)
    _, report = from_state_dict(model, {"_orig_mod.module." + k: v for k, v in sd.items()}, strict=False,
                                init=variables)
    assert report.notes[0] == "removed the key prefix '_orig_mod.module.'"


def test_bfloat16_arrays_are_read_as_float32():
    model = create_model("small_aib_qt")
    variables = random_variables(model, seed=2)
    sd = to_state_dict(model, variables)
    halved = {k: v.astype(jnp.bfloat16) if v.dtype == np.float32 else v for k, v in sd.items()}  # ml_dtypes bfloat16
    loaded = from_state_dict(model, halved)
    kernel = loaded["params"]["front"]["conv1"]["conv"]["kernel"]
    assert kernel.dtype == jnp.float32
    expected = sd["front.conv1.conv.weight"].astype(jnp.bfloat16).astype(np.float32).transpose(2, 3, 1, 0)
    assert bits_equal(np.asarray(kernel), expected)


def test_an_empty_file_is_named_without_needing_torch(tmp_path):
    path = tmp_path / "best_acc.tar"
    path.write_bytes(b"")
    with pytest.raises(OfficialCheckpointError, match=r"best_acc\.tar is empty \(0 bytes\)"):
        read_checkpoint_object(path)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        read_checkpoint_object(tmp_path / "missing.pth")
    with pytest.raises(OfficialCheckpointError, match="is a directory"):
        read_checkpoint_object(tmp_path)


def test_a_truncated_or_foreign_file_is_named(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {"a.weight": torch.ones(100, 100)}}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(OfficialCheckpointError, match=r"checkpoint\.pth\.tar \(1000 bytes\) could not be read"):
        read_checkpoint_object(path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match=r"notes\.txt .* could not be read as a PyTorch checkpoint"):
        read_checkpoint_object(tmp_path / "notes.txt")


def test_torch_bfloat16_tensors_load_naming_no_scalar_type_error(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from ib_attention_jax.interop import load_official_checkpoint

    model = create_model("small_aib_qt")
    variables = random_variables(model, seed=3)
    sd = to_state_dict(model, variables)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    halved = {k: t.bfloat16() if t.is_floating_point() else t for k, t in tensors.items()}
    loaded, report = from_state_dict(model, halved, strict=False, init=variables)  # tensors directly
    assert any("bfloat16" in note for note in report.notes) and report.num_kept == 0
    expected = halved["decoder.fc2.weight"].float().numpy().T
    assert bits_equal(np.asarray(loaded["params"]["decoder"]["fc2"]["kernel"]), expected)
    torch.save({"model_states": {"net": halved}}, tmp_path / "best_acc.tar")  # and through a file
    from_file = load_official_checkpoint(tmp_path / "best_acc.tar")
    assert from_file["decoder.fc2.weight"].dtype == np.float32
    assert_trees_bitwise_equal(from_state_dict(model, from_file), loaded)


def test_official_checkpoint_file_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from ib_attention_jax.interop import load_official_checkpoint, save_official_checkpoint

    model = create_model("small_aib_qt")
    variables = random_variables(model, seed=4)
    sd = to_state_dict(model, variables)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "args": argparse.Namespace(lr=0.1),
                "state_dict": {f"module.{k}": torch.from_numpy(np.array(v)) for k, v in sd.items()}}, path)
    assert_trees_bitwise_equal(from_state_dict(model, load_official_checkpoint(path)), variables)
    save_official_checkpoint(tmp_path / "out.pth", sd)
    back = torch.load(tmp_path / "out.pth", weights_only=True)
    assert set(back) == set(sd) and not list(tmp_path.glob(".out.pth.tmp*"))
    with pytest.raises(KeyError, match="no 'net_ema' weights"):
        load_official_checkpoint(path, which="net_ema")
