"""Official checkpoint files: the layout logic (numpy) and the torch round trip (optional extra)."""

import numpy as np
import pytest

from ib_attention_jax import create_model
from ib_attention_jax.interop import extract_state_dict, from_state_dict, strip_module_prefix, to_state_dict


def _sd():
    return {"a.weight": np.ones((2, 3), np.float32), "a.bias": np.zeros(2, np.float32)}


def test_extract_state_dict_from_every_official_layout():
    sd = _sd()
    assert extract_state_dict(sd).keys() == sd.keys()  # VGG best_acc.tar: a bare state_dict
    assert extract_state_dict({"epoch": 3, "state_dict": sd, "best_acc": 0.9}).keys() == sd.keys()  # WRN
    cub = {"iter": 1, "model_states": {"net": sd, "net_ema": {"b.weight": np.ones(1)}}}
    assert extract_state_dict(cub).keys() == sd.keys()
    assert list(extract_state_dict(cub, which="net_ema")) == ["b.weight"]


def test_extract_state_dict_errors_name_what_is_there():
    with pytest.raises(KeyError, match="epoch"):
        extract_state_dict({"epoch": 3})
    with pytest.raises(KeyError, match="net_ema"):
        extract_state_dict({"model_states": {"net": _sd()}}, which="net_ema")


def test_dataparallel_prefix_is_stripped():
    sd = {f"module.{k}": v for k, v in _sd().items()}
    assert set(strip_module_prefix(sd)) == set(_sd())


def test_official_checkpoint_file_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional extra (make torch)")
    import jax
    import jax.numpy as jnp

    from ib_attention_jax.interop import load_official_checkpoint, save_official_checkpoint

    model = create_model("small_aib_qt")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), deterministic=True)
    sd = to_state_dict(model, variables)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in sd.items()}}, path)
    loaded = from_state_dict(model, load_official_checkpoint(path))
    chex_equal = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), loaded, dict(variables))
    assert all(jax.tree_util.tree_leaves(chex_equal))
    save_official_checkpoint(tmp_path / "out.pth", sd)
    assert set(torch.load(tmp_path / "out.pth", weights_only=True)) == set(sd)
