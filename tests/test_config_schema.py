"""The config schema: unknown keys, typed model options, values checked up front, the restart policy."""

import json

import pytest

from ib_attention_jax.configs import changes, schema
from ib_attention_jax.configs.base import get_base_config
from ib_attention_jax.configs.files import load_config_file
from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.errors import ConfigError


def test_an_unknown_key_in_a_config_names_it_and_the_closest_known_ones():
    c = quickstart()
    c.batch_sise = 16
    c.optimizer.lerning_rate = 0.1
    with pytest.raises(ConfigError) as err:
        schema.check_config(c)
    message = str(err.value)
    assert "'batch_sise'" in message and "batch_size" in message
    assert "'optimizer.lerning_rate'" in message and "optimizer.learning_rate" in message


def test_a_config_file_with_a_typo_fails_to_load(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from ib_attention_jax.configs.quickstart import quickstart\n\n"
                    "def get_config():\n    c = quickstart()\n    c.batch_sise = 16\n    return c\n")
    with pytest.raises(ConfigError, match=r"config file .*typo.py: unknown config key 'batch_sise' "
                                          r"\(did you mean batch_size"):
        load_config_file(str(path))


def test_every_key_of_the_base_config_is_known_and_passes():
    base = get_base_config()
    schema.check_config(base)
    assert "optimizer.learning_rate" in schema.known_keys() and "model_kwargs" in schema.known_keys()


def test_split_config_overrides_takes_every_form_out_of_argv():
    rest, overrides = schema.split_config_overrides(
        ["prog", "--config=x.py", "--config.batch_size=8", "--config.num_steps", "-5", "--config.tensorboard",
         "--noconfig.progress", "--workdir=w", "--config.model_kwargs.latent_dim=32"])
    assert rest == ["prog", "--config=x.py", "--workdir=w"]
    assert overrides == [("batch_size", "8"), ("num_steps", "-5"), ("tensorboard", "true"), ("progress", "false"),
                         ("model_kwargs.latent_dim", "32")]


def test_overrides_are_typed_from_the_base_config_and_the_builder():
    c = schema.apply_overrides(quickstart(), [
        ("batch_size", "8"), ("optimizer.milestones", "10,20"), ("data_dir", "None"), ("tensorboard", "yes"),
        ("model_kwargs.latent_dim", "32"), ("model_kwargs.conv_impl", "xla"), ("num_epochs", "2")])
    assert c.batch_size == 8 and c.optimizer.milestones == (10, 20) and c.data_dir is None and c.tensorboard
    assert c.model_kwargs.latent_dim == 32 and isinstance(c.model_kwargs.latent_dim, int)
    assert c.model_kwargs.conv_impl == "xla" and c.num_epochs == 2.0
    # model first: the options are those of the model the command line picks
    c = schema.apply_overrides(quickstart(), [("model_kwargs.dropout_rate", "0.1"), ("model", "wrn_aib")])
    assert c.model_kwargs.dropout_rate == 0.1
    c = schema.apply_overrides(quickstart(), [("model", "cub_vgg16_aib"), ("dataset", "cub"),
                                              ("model_kwargs.deep_head", "None")])
    assert c.model_kwargs.deep_head is None


@pytest.mark.parametrize("override, expected", [
    (("batch_sise", "3"), r"unknown config key 'batch_sise' \(did you mean batch_size"),
    (("optimizer.lerning_rate", "3"), r"did you mean optimizer.learning_rate\?"),
    (("model_kwargs.latent_dimm", "3"), r"small_aib has no option 'latent_dimm' \(did you mean latent_dim\?\)"),
    (("model_kwargs.dropout_rate", "0.1"), r"small_aib has no option 'dropout_rate'"),
    (("model_kwargs.latent_dim", "abc"), r"'abc' is not of type int"),
    (("batch_size", "2.5"), r"'2.5' is not of type int"),
    (("optimizer", "adam"), r"--config.optimizer is a group of keys"),
    (("model_kwargs.dtype", "bfloat16"), r"no option 'dtype'"),  # set by half_precision
])
def test_bad_overrides_are_short_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        schema.apply_overrides(quickstart(), [override])


@pytest.mark.parametrize("key, value, expected", [
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("num_steps", -5, "num_steps must be >= 0, got -5"),
    ("num_epochs", -1.0, "num_epochs must be >= 0"),
    ("num_classes", 5, r"num_classes=5 but cluttered_digits has labels 0..9 \(10 classes\)"),
    ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
    ("model", "small_aip", r"model='small_aip' is not one of .* \(did you mean small_aib"),
    ("dataset", "cifar11", r"dataset='cifar11' is not one of"),
    ("model", "vgg16_aib", "is not one of"),
    ("normalization", "imagenett", r"did you mean imagenet"),
    ("parallel", "pjit", "parallel='pjit' is not one of shard_map, pmap"),
    ("model_kwargs", {"num_anchors": 4}, "small_aib has no quantiser; use small_aib_qt for anchors"),
])
def test_values_are_checked_before_anything_is_built(key, value, expected):
    c = quickstart()
    c[key] = value
    with pytest.raises(ConfigError, match=expected):
        schema.check_config(c)


def test_nested_values_and_image_size_are_checked():
    c = quickstart()
    c.optimizer.name = "adamw"
    c.optimizer.schedule = "cosinus"
    c.objective.kl_form = "exact"
    with pytest.raises(ConfigError) as err:
        schema.check_config(c)
    for text in ("optimizer.name='adamw'", "optimizer.schedule='cosinus'", "objective.kl_form='exact'"):
        assert text in str(err.value)
    c = quickstart()
    c.model = "cub_vgg16_aib"
    with pytest.raises(ConfigError, match="takes 224x224 images but cluttered_digits yields 32x32"):
        schema.check_config(c)


def test_the_batch_must_split_over_hosts_and_devices():
    c = quickstart()
    c.batch_size, c.eval_batch_size = 6, 8
    schema.check_device_layout(c, 1, 2)
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by the 4 devices"):
        schema.check_device_layout(c, 1, 4)
    with pytest.raises(ConfigError, match="eval_batch_size=8 is not divisible by the 3 hosts"):
        schema.check_device_layout(c, 3, 6)


def test_resolve_makes_defaults_explicit_and_round_trips_through_json():
    c = quickstart("small_aib_qt")
    resolved = schema.resolve(c)
    assert resolved.num_classes == 10
    assert resolved.model_kwargs.num_anchors == 8 and resolved.model_kwargs.latent_dim == 64
    back = schema.from_dict(json.loads(json.dumps(resolved.to_dict(), default=list)))
    assert changes.compare(resolved.to_dict(), back.to_dict()) == []
    assert back.optimizer.milestones == resolved.optimizer.milestones


def _changed(**edits) -> list[changes.ConfigChange]:
    old = schema.resolve(quickstart())
    new = schema.resolve(quickstart())
    for key, value in edits.items():
        node = new
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return changes.compare(old.to_dict(), new.to_dict())


def test_the_restart_policy_refuses_what_changes_the_checkpoint_and_reports_the_rest():
    (lr,) = _changed(optimizer__learning_rate=3e-3)
    assert (lr.key, lr.old, lr.new, lr.refused) == ("optimizer.learning_rate", 1.5e-3, 3e-3, False)
    assert "optimizer.learning_rate: 0.0015 -> 0.003" == lr.describe()
    assert not any(c.refused for c in _changed(batch_size=32, num_steps=7, eval_batch_size=10, log_every_steps=3))
    for edit in ({"model": "small_plain"}, {"seed": 1}, {"optimizer__name": "sgd"}, {"half_precision": True},
                 {"model_kwargs__latent_dim": 32}, {"num_classes": 12}):
        assert [c.refused for c in _changed(**edit)] == [True], edit
    assert [c.refused for c in _changed(model_kwargs__conv_impl="xla")] == [False]
    assert [c.refused for c in _changed(ema_decay=0.99)] == [True]  # turns the EMA on
    assert [c.refused for c in _changed(optimizer__weight_decay=5e-4)] == [True]
    assert not changes.compare({"ema_decay": 0.99}, {"ema_decay": 0.999})[0].refused  # a new value, still on
    assert changes.compare({"process_id": 0}, {"process_id": 3}) == []  # ignored


def test_keys_missing_from_an_older_config_take_their_defaults():
    new = schema.resolve(quickstart()).to_dict()
    old = json.loads(json.dumps(new, default=list))
    del old["eval_every_steps"], old["model_kwargs"]["anchor_init"]
    assert changes.compare(old, new) == []


def test_the_policy_table_names_only_known_keys_and_the_run_id_follows_refused_keys():
    known = set(schema.known_keys())
    assert {k for k in changes.POLICY if not k.startswith("model_kwargs.")} <= known
    base = schema.resolve(quickstart()).to_dict()
    same = json.loads(json.dumps(base, default=list))
    same["optimizer"]["learning_rate"], same["batch_size"] = 0.1, 7
    other = json.loads(json.dumps(base, default=list))
    other["seed"] = 3
    assert changes.run_identity(base) == changes.run_identity(same) != changes.run_identity(other)
