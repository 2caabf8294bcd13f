"""Starting a model from other weights: another run's checkpoint, official files, the report and its errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from weight_checks import assert_trees_bitwise_equal, bits_equal, random_variables

from ib_attention_jax.interop.init_from import (
    load_init_weights,
    load_init_weights_and_ema,
    load_state_dict_init,
    merge_flax_variables,
)
from ib_attention_jax.interop.state_dict import StateDictError, to_state_dict
from ib_attention_jax.models.registry import create_model
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.state import TrainState


def _init(model, seed):
    x = jnp.zeros((1, 32, 32, 3))
    return jax.jit(lambda key: model.init(key, x, deterministic=True))(jax.random.key(seed))


@functools.cache
def small_aib_workdir(tmp_root):
    """A small_aib work directory with one checkpoint, as a training run leaves it (Adam state, EMA)."""
    model = create_model("small_aib", conv_impl="xla")
    variables = jax.tree_util.tree_map(np.asarray, random_variables(model, seed=11))
    state = TrainState.create(variables, optax.adam(1e-3), jax.random.PRNGKey(0), ema=True)
    state = state.replace(ema=jax.tree_util.tree_map(lambda a: a + 1, state.ema))
    checkpointer = Checkpointer(f"{tmp_root}/small_aib/checkpoints")
    checkpointer.save(300, state, {"epoch": 1})
    checkpointer.close()
    return f"{tmp_root}/small_aib", variables


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return small_aib_workdir(str(tmp_path_factory.mktemp("runs")))


def test_fine_tune_small_aib_qt_from_a_small_aib_workdir(workdir):
    path, trained = workdir
    model = create_model("small_aib_qt", conv_impl="xla")
    init = _init(model, seed=5)
    variables, report = load_init_weights(path, model, init)
    assert report.group_names("kept") == ["quantizer"] and report.num_kept == 1  # the anchors
    assert report.group_names("loaded") == ["attention", "decoder", "encoder", "front"]
    assert report.ignored == () and "checkpoints/300" in report.source
    text = report.format()
    assert "kept at init" in text and "quantizer (1 tensor)" in text and "front (" in text
    assert bits_equal(variables["params"]["quantizer"]["anchors"], init["params"]["quantizer"]["anchors"])
    without_anchors = {c: {k: v for k, v in variables[c].items() if k != "quantizer"} for c in variables}
    assert_trees_bitwise_equal(without_anchors, trained)
    # the checkpoints/ folder itself and one step's folder name the same checkpoint
    for same in (f"{path}/checkpoints", f"{path}/checkpoints/300"):
        assert_trees_bitwise_equal(load_init_weights(same, model, init)[0], variables)


def test_the_ema_weights_of_a_run_on_request(workdir):
    path, trained = workdir
    model = create_model("small_aib", conv_impl="xla")
    kernel = trained["params"]["front"]["conv1"]["conv"]["kernel"]
    variables, _ = load_init_weights(path, model, random_variables(model), use_ema=True)
    assert bits_equal(variables["params"]["front"]["conv1"]["conv"]["kernel"], kernel + 1)
    variables, ema, report = load_init_weights_and_ema(path, model, random_variables(model))  # one read, both
    assert bits_equal(variables["params"]["front"]["conv1"]["conv"]["kernel"], kernel)
    assert bits_equal(ema["params"]["front"]["conv1"]["conv"]["kernel"], kernel + 1)
    assert report.info == {"step": 300}


def test_the_reverse_direction_reports_the_anchors_as_ignored():
    qt = create_model("small_aib_qt")
    plain = create_model("small_aib")
    variables, report = merge_flax_variables(random_variables(qt), plain, random_variables(plain, 1), source="qt run")
    assert report.ignored == (("quantizer", 1),) and report.num_kept == 0


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_variable(workdir):
    path, _ = workdir
    model = create_model("small_aib", latent_dim=16, conv_impl="xla")
    with pytest.raises(StateDictError, match=r"encoder/fc/kernel: got \(\d+, 128\), expected \(\d+, 32\)"):
        load_init_weights(path, model, random_variables(model))


def test_paths_that_hold_no_weights_are_named(tmp_path):
    model = create_model("small_aib")
    with pytest.raises(FileNotFoundError, match="init_from .*nowhere does not exist"):
        load_init_weights(tmp_path / "nowhere", model, {})
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint of this project"):
        load_init_weights(tmp_path / "empty_run", model, {})


def test_nothing_in_common_is_an_error_not_an_empty_load():
    model = create_model("small_aib")
    with pytest.raises(StateDictError, match="no key of the state_dict fits small_aib"):
        load_state_dict_init({"features.0.op.0.weight": np.zeros((64, 3, 3, 3), np.float32)}, model,
                             random_variables(model))
    with pytest.raises(StateDictError, match="no variable of .* fits small_aib"):
        merge_flax_variables({"params": {"other": {"w": np.zeros(3)}}}, model, random_variables(model))


def test_an_official_file_of_the_qt_model_starts_the_plain_model(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is the optional extra (make torch)")
    from ib_attention_jax.interop.export import export_official

    qt = create_model("small_aib_qt")
    source = random_variables(qt, seed=3)
    export_official(qt, source, tmp_path / "best_acc.tar", "vgg", epoch=2)  # model_states.net, module. keys
    plain = create_model("small_aib")
    variables, report = load_init_weights(tmp_path / "best_acc.tar", plain, random_variables(plain))
    assert report.ignored == (("quantizer", 1),) and report.num_kept == 0
    assert "official VGG checkpoint" in report.source and "model_states.net" in report.source
    assert any("'module.'" in note for note in report.notes)
    assert bits_equal(variables["params"]["decoder"]["fc2"]["kernel"], source["params"]["decoder"]["fc2"]["kernel"])
    assert set(to_state_dict(plain, variables)) <= set(to_state_dict(qt, source))
    assert report.info == {"layout": "vgg", "epoch": 2, "test_acc": 0.0, "test_loss": 0.0}
    with pytest.raises(KeyError, match="holds no EMA weights"):  # the VGG script keeps none
        load_init_weights(tmp_path / "best_acc.tar", plain, random_variables(plain), which="net_ema")
