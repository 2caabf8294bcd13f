"""The attention baselines LTPA and ABN: registry, shapes, parameter counts, maps, the LTPA g branch,
losses, state_dict interop and a few training steps of the small versions."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ib_attention_jax.evaluation.step import make_eval_step
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.state_dict import from_state_dict, to_state_dict, variable_shapes
from ib_attention_jax.models.aib import ModelOutput
from ib_attention_jax.models.ltpa import mixture_map
from ib_attention_jax.models.registry import create_model, get_spec, list_models
from ib_attention_jax.objectives import ObjectiveConfig, aib_loss, cross_entropy
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.training.optimizers import OptimizerConfig, make_optimizer
from ib_attention_jax.training.state import TrainState
from ib_attention_jax.training.step import StepConfig, make_train_step

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "baselines_parity"
BASELINES = ["ltpa_vgg", "abn_wrn", "small_ltpa", "small_abn"]
# (params, batch-norm running statistics) element counts with 10 classes.
PARAM_COUNTS = {"ltpa_vgg": (19855434, 10496), "abn_wrn": (64349486, 28854), "small_ltpa": (135786, 512),
                "small_abn": (162558, 854)}
# name -> {map name: (h, w)}; the map evaluation reads is at the first map's resolution
MAPS = {"ltpa_vgg": {"a1": (32, 32), "a2": (16, 16), "a3": (8, 8)}, "small_ltpa": {"a1": (32, 32), "a2": (16, 16),
        "a3": (8, 8)}, "abn_wrn": {"att": (16, 16)}, "small_abn": {"att": (16, 16)}}
FEATURES = {"ltpa_vgg": (32, 32, 512), "small_ltpa": (32, 32, 128), "abn_wrn": (16, 16, 320), "small_abn": (16, 16, 32)}
FIXTURE_MODELS = {"ltpa_vgg_cifar100": "ltpa_vgg", "abn_wrn_cifar100": "abn_wrn"}
N, BATCH = 3, 2


def _key(seed):
    return jax.random.key(seed, impl="rbg")


def _count(tree, stats=False):
    flat = traverse_util.flatten_dict(dict(tree))
    return sum(int(np.prod(v.shape)) for k, v in flat.items() if not (stats and k[-1] == "num_batches_tracked"))


def _abstract_run(model, classes=10):
    x = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)

    def run(x):
        variables = model.init({"params": _key(0), "dropout": _key(1)}, x, deterministic=True)
        return variables, model.apply(variables, x, num_samples=N)

    return jax.eval_shape(run, x)


@functools.cache
def manifest(name):
    return json.loads((FIXTURES / f"{name}_seed0.json").read_text())


def test_the_baselines_are_registered():
    assert set(BASELINES) <= set(list_models())
    for name in BASELINES:
        spec = get_spec(name)
        assert spec.baseline and not spec.plain and not spec.quantized
        assert spec.image_size == 32 and spec.num_classes == 10
    assert get_spec("ltpa_vgg").family == "ltpa_vgg" and get_spec("abn_wrn").family == "abn_wrn"
    assert not any(get_spec(n).baseline for n in list_models() if n not in BASELINES)


@pytest.mark.parametrize("option", ["num_anchors", "latent_dim", "anchor_init"])
def test_aib_options_are_rejected(option):
    with pytest.raises(ValueError, match=f"attention baseline: it has no {option}"):
        create_model("small_abn", **{option: 4})


@pytest.mark.parametrize("name", BASELINES)
def test_output_shapes_and_parameter_counts(name):
    variables, out = _abstract_run(create_model(name))
    assert (_count(variables["params"]), _count(variables["batch_stats"], stats=True)) == PARAM_COUNTS[name]
    assert set(variables) == {"params", "batch_stats"}  # nothing sown at init
    assert out.logits.shape == (BATCH, 10) and out.logits.dtype == jnp.float32
    assert out.features.shape == (BATCH, *FEATURES[name])
    assert {k: v.shape for k, v in out.attention_maps.items()} == {k: (BATCH, *hw) for k, hw in MAPS[name].items()}
    h, w = next(iter(MAPS[name].values()))
    for field in ("logit", "mean", "std_pre", "std"):
        assert getattr(out.attention, field).shape == (BATCH, h, w, 1), field
    assert out.attention.samples.shape == (N, BATCH, h, w, 1)
    assert out.latent is None and out.quantizer is None and out.stats is None
    if "abn" in name:
        assert out.aux_logits.shape == (BATCH, 10) and out.attention_used.shape == (N, BATCH, h, w, 1)
    else:
        assert out.aux_logits is None


@pytest.mark.parametrize("fixture,name", list(FIXTURE_MODELS.items()))
def test_parameter_counts_equal_the_public_state_dict(fixture, name):
    params = stats = 0
    for key, shape, _ in manifest(fixture)["state_dict"]:
        if key.endswith((".running_mean", ".running_var")):
            stats += int(np.prod(shape))
        elif not key.endswith(".num_batches_tracked"):
            params += int(np.prod(shape))
    variables, _ = _abstract_run(create_model(name, manifest(fixture)["num_classes"]))
    assert (_count(variables["params"]), _count(variables["batch_stats"], stats=True)) == (params, stats)


def _random_variables(model, seed=0):
    """Distinct values for every variable (running variances positive), from the shape tree."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, sds in traverse_util.flatten_dict(dict(variable_shapes(model))).items():
        if path[-1] == "num_batches_tracked":
            out[path] = np.asarray(rng.integers(1, 100), sds.dtype)
        elif path[-1] == "var":
            out[path] = rng.uniform(0.5, 1.5, sds.shape).astype(sds.dtype)
        else:
            fan_in = int(np.prod(sds.shape[:-1])) if len(sds.shape) > 1 else 10
            out[path] = (rng.standard_normal(sds.shape) * (1.5 / np.sqrt(fan_in))).astype(sds.dtype)
    return traverse_util.unflatten_dict(out)


@functools.cache
def small_run(name):
    """(model, variables, images, jitted inference apply with intermediates) of a small baseline."""
    model = create_model(name, conv_impl="xla")
    variables = _random_variables(model)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 32, 3)), jnp.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, num_samples=2, mutable=["intermediates"]))
    return model, variables, x, apply


def _sown(state):
    return {p[-1]: v[-1] for p, v in traverse_util.flatten_dict(dict(state["intermediates"])).items()}


def test_small_ltpa_maps_are_softmax_distributions_and_their_mixture_is_the_mean_map():
    _, variables, x, apply = small_run("small_ltpa")
    out, state = apply(variables, x)
    sown = _sown(state)
    for i in (1, 2, 3):
        a = np.asarray(out.attention_maps[f"a{i}"], np.float64)
        b, h, w = a.shape
        np.testing.assert_allclose(a.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        c = np.asarray(sown[f"c{i}"], np.float64).reshape(b, h * w)
        softmax = np.exp(c - c.max(1, keepdims=True))
        np.testing.assert_allclose(a.reshape(b, -1), softmax / softmax.sum(1, keepdims=True), rtol=1e-4, atol=1e-8)
    mean = np.asarray(out.attention.mean[..., 0])
    assert mean.shape == (4, 32, 32) and np.all(mean > 0)
    np.testing.assert_allclose(mean.max(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.attention.logit), np.log(np.asarray(out.attention.mean)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.attention.samples[1]), np.asarray(out.attention.mean))
    assert np.ptp(mean) > 0.05  # the random weights give a map that is not flat


def test_mixture_map_of_uniform_maps_is_flat_and_of_a_peak_keeps_it():
    uniform = [jnp.full((1, s, s, 1), 1.0 / (s * s)) for s in (8, 4, 2)]
    np.testing.assert_allclose(np.asarray(mixture_map(uniform)), 1.0, rtol=1e-6)
    peak = np.full((1, 4, 4, 1), 0.01)
    peak[0, 1, 2, 0] = 1.0 - 15 * 0.01
    mixed = np.asarray(mixture_map([jnp.asarray(peak, jnp.float32), jnp.full((1, 2, 2, 1), 0.25)]))
    assert mixed.shape == (1, 4, 4, 1) and np.unravel_index(np.argmax(mixed), mixed.shape) == (0, 1, 2, 0)


def test_small_abn_map_is_the_sigmoid_of_its_logit_and_modulates_the_perception_branch():
    model, variables, x, apply = small_run("small_abn")
    out, state = apply(variables, x)
    att = np.asarray(out.attention.mean)
    np.testing.assert_allclose(att, 1 / (1 + np.exp(-np.asarray(out.attention.logit))), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.attention_maps["att"]), att[..., 0])
    np.testing.assert_array_equal(np.asarray(out.attention_used[0]), att)
    assert np.all((att > 0) & (att < 1)) and np.ptp(att) > 0.05
    ax = np.asarray(_sown(state)["att_ax"])
    kernel = np.asarray(variables["params"]["att_conv2"]["kernel"][0, 0])  # (classes, classes)
    np.testing.assert_allclose(np.asarray(out.aux_logits), (ax @ kernel).mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    # f * (1 + a): the perception branch on the modulated map gives the logits
    f = np.asarray(out.features)
    logits = model.perception.apply({k: variables[k]["perception"] for k in ("params", "batch_stats")},
                              jnp.asarray(f + f * att), train=False)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(logits), rtol=1e-4, atol=1e-5)


def test_ltpa_global_feature_cancels_in_the_maps_but_not_in_the_scores():
    """A port that gets g wrong matches the logits and maps; only the compatibility scores show it."""
    _, variables, x, apply = small_run("small_ltpa")
    wrong = jax.tree_util.tree_map(lambda v: v, variables)
    wrong["params"]["trunk"]["dense"]["bias"] = variables["params"]["trunk"]["dense"]["bias"] + 1.0
    (out, state), (bad, bad_state) = apply(variables, x), apply(wrong, x)
    np.testing.assert_allclose(np.asarray(bad.logits), np.asarray(out.logits), rtol=1e-4, atol=1e-5)
    for i in (1, 2, 3):
        a, b = np.asarray(out.attention_maps[f"a{i}"]), np.asarray(bad.attention_maps[f"a{i}"])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
        c, c_bad = np.asarray(_sown(state)[f"c{i}"]), np.asarray(_sown(bad_state)[f"c{i}"])
        assert np.max(np.abs(c_bad - c)) / np.max(np.abs(c)) > 1e-2  # far beyond the 2e-5 parity tolerance
        # the shift is one constant per image: op(L + g) = op(L) + w.g
        shift = (c_bad - c).reshape(len(c), -1)
        np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), rtol=1e-3, atol=1e-5)


def _output(logits, aux=None):
    logits = jnp.asarray(logits, jnp.float32)
    return ModelOutput(logits=logits, features=jnp.zeros((logits.shape[0], 2, 2, 1)),
                       aux_logits=None if aux is None else jnp.asarray(aux, jnp.float32))


def _numpy_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels])


def test_ltpa_loss_is_the_cross_entropy_in_nats():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 7)), np.array([0, 3, 6, 2, 2])
    total, parts = aib_loss(_output(logits), jnp.asarray(labels), ObjectiveConfig(units="nats", beta=0.0))
    assert set(parts) == {"ce", "class_loss", "total"}
    np.testing.assert_allclose(float(total), _numpy_ce(logits, labels), rtol=1e-6)


def test_abn_loss_adds_the_attention_branch_cross_entropy():
    rng = np.random.default_rng(1)
    per, att, labels = rng.standard_normal((6, 5)), rng.standard_normal((6, 5)), np.array([0, 1, 2, 3, 4, 0])
    total, parts = aib_loss(_output(per, att), jnp.asarray(labels), ObjectiveConfig(units="nats"))
    assert set(parts) == {"ce", "class_loss", "aux_ce", "aux_loss", "total"}
    np.testing.assert_allclose(float(parts["ce"]), _numpy_ce(per, labels), rtol=1e-6)
    np.testing.assert_allclose(float(parts["aux_ce"]), _numpy_ce(att, labels), rtol=1e-6)
    np.testing.assert_allclose(float(total), _numpy_ce(per, labels) + _numpy_ce(att, labels), rtol=1e-6)
    _, half = aib_loss(_output(per, att), jnp.asarray(labels), ObjectiveConfig(units="bits", aux_coef=0.5))
    np.testing.assert_allclose(float(half["total"]),
                               (_numpy_ce(per, labels) + 0.5 * _numpy_ce(att, labels)) / np.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(cross_entropy(jnp.asarray(att), jnp.asarray(labels))), float(parts["aux_ce"]))
    with pytest.raises(ValueError, match="aux_coef"):
        ObjectiveConfig(aux_coef=-1.0)


@pytest.mark.parametrize("name", ["small_ltpa", "small_abn"])
def test_small_state_dict_round_trip_is_exact(name):
    model, variables, _, _ = small_run(name)
    sd = to_state_dict(model, variables)
    back = from_state_dict(model, sd)
    fa, fb = traverse_util.flatten_dict(dict(variables)), traverse_util.flatten_dict(dict(back))
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.asarray(fb[k]).dtype == np.asarray(fa[k]).dtype and np.array_equal(fb[k], fa[k]), k


@pytest.mark.parametrize("fixture,name", list(FIXTURE_MODELS.items()))
def test_public_state_dict_round_trip_and_key_set(fixture, name):
    """Public names -> Flax -> public names gives back every key of the public state_dict, values exact."""
    sd = state_dict_from_manifest(manifest(fixture))
    model = create_model(name, manifest(fixture)["num_classes"])
    back = to_state_dict(model, from_state_dict(model, sd))
    assert set(back) == {key for key, _, _ in manifest(fixture)["state_dict"]}
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key


def test_public_names_of_the_ltpa_modules():
    model = create_model("ltpa_vgg", 100)
    zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape),
                                   dict(variable_shapes(model)))
    keys = set(to_state_dict(model, zeros, include_counters=False))
    assert {"conv_block1.op.0.weight", "conv_block3.op.7.running_var", "conv_block6.op.4.weight",
            "conv_block6.op.5.bias", "dense.weight", "dense.bias", "projector.op.weight", "attn1.op.weight",
            "attn3.op.weight", "classify.weight"} <= keys


@pytest.mark.parametrize("name", ["small_ltpa", "small_abn"])
def test_small_baseline_trains_and_evaluates(name):
    """A few steps of the project's train step on one batch lower the loss; the eval step gives the maps."""
    model = create_model(name, conv_impl="xla", bn_axis_name="data")
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))(_key(0))
    tx, _ = make_optimizer(OptimizerConfig(name="adam", learning_rate=3e-3), steps_per_epoch=10, total_steps=10)
    state = TrainState.create(variables, tx, jax.random.PRNGKey(0))
    step_config = StepConfig(ObjectiveConfig(units="nats", beta=0.0), eval_num_samples=2)
    runner = Runner("shard_map", jax.devices()[:1])
    step = runner.compile_train_step(make_train_step(model, tx, step_config))
    rng = np.random.default_rng(0)
    feed = {"image": rng.standard_normal((8, 32, 32, 3)).astype(np.float32),
            "label": np.arange(8, dtype=np.int32) % 10, "index": np.arange(8, dtype=np.int32)}
    pstate, losses = runner.replicate(state), []
    for _ in range(6):
        pstate, metrics = step(pstate, runner.shard_batch(feed))
        losses.append(float(metrics["total"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    if name == "small_abn":
        np.testing.assert_allclose(float(metrics["total"]), float(metrics["ce"]) + float(metrics["aux_ce"]),
                                   rtol=1e-5)
    else:
        assert "aux_ce" not in metrics
    trained = runner.unreplicate(pstate)
    eval_step = jax.jit(make_eval_step(create_model(name, conv_impl="xla"), step_config, _key(3)))
    result = eval_step(trained, {k: jnp.asarray(v) for k, v in feed.items()})
    h, w = next(iter(MAPS[name].values()))
    assert result["attention"].shape == (8, h, w)
    np.testing.assert_array_equal(np.asarray(result["pred_mc"]), np.asarray(result["pred_mean"]))  # no noise


@pytest.mark.parametrize("name", ["small_ltpa", "small_abn"])
def test_bfloat16_compute_keeps_logits_and_maps_in_float32(name):
    model = create_model(name, conv_impl="xla", dtype=jnp.bfloat16)
    _, variables, x, _ = small_run(name)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    reference, _ = small_run(name)[3](variables, x)
    assert out.logits.dtype == jnp.float32 and out.attention.mean.dtype == jnp.float32
    assert out.aux_logits is None or out.aux_logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(reference.logits),
                               atol=0.1 * np.ptp(reference.logits))


def test_ltpa_recipe_reproduces_the_public_lambda_schedule_over_its_three_passes_per_epoch():
    """train.py: 300 epochs of 3 passes, epoch e at 0.1 * 0.5 ** ((e + 1) // 25) (LambdaLR stepped first)."""
    from ib_attention_jax.configs.baselines import ltpa_cifar
    from ib_attention_jax.training.loop import _optimizer_config
    from ib_attention_jax.training.schedules import make_schedule

    config = ltpa_cifar("cifar100")
    opt = _optimizer_config(config)
    steps_per_pass = 3
    schedule = make_schedule(opt.schedule, opt.learning_rate, steps_per_pass, int(config.num_epochs) * steps_per_pass,
                             milestones=opt.milestones, gamma=opt.gamma)
    passes = np.arange(int(config.num_epochs))
    expected = 0.1 * 0.5 ** ((passes // 3 + 1) // 25)
    got = np.asarray([float(schedule(p * steps_per_pass + s)) for p in passes for s in (0, 2)]).reshape(-1, 2)
    np.testing.assert_allclose(got, np.stack([expected, expected], 1), rtol=1e-6)
    assert config.num_epochs == 900 and config.objective.units == "nats" and config.model == "ltpa_vgg"


def test_ltpa_evaluation_scores_each_map_beside_their_mean():
    """LTPA's three maps each get the pointing game, the mass in the box and deletion/insertion."""
    import optax

    from ib_attention_jax.evaluation.evaluate import AttentionMetricsOptions, evaluate
    from ib_attention_jax.evaluation.step import make_eval_step
    from ib_attention_jax.runtime.parallel import Runner
    from ib_attention_jax.training.state import TrainState
    from ib_attention_jax.training.step import StepConfig

    model = create_model("small_ltpa", 10, conv_impl="xla")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), deterministic=True)
    state = TrainState.create(variables, optax.sgd(0.1), jax.random.PRNGKey(0))
    runner = Runner("shard_map", jax.devices()[:1])
    eval_step = runner.compile_eval_step(make_eval_step(model, StepConfig(eval_num_samples=1), jax.random.key(1)))
    rng = np.random.default_rng(0)
    batches = [{"image": rng.standard_normal((4, 32, 32, 3)).astype(np.float32),
                "label": np.arange(4, dtype=np.int32),
                "box": np.tile(np.asarray([[4.0, 4.0, 20.0, 20.0]], np.float32), (4, 1))} for _ in range(2)]
    result = evaluate(runner, eval_step, runner.replicate(state), batches, 32,
                      attention_metrics=AttentionMetricsOptions(model=model, num_examples=4, steps=4))
    entries = result.summary_entries()
    for name in ("a1", "a2", "a3"):
        for metric in ("pointing_game", "energy_in_box", "deletion_auc", "insertion_auc"):
            assert 0.0 <= entries[f"{metric}_{name}"] <= 1.0, (metric, name)
    assert 0.0 <= entries["pointing_game"] <= 1.0 and "deletion_auc" in entries  # the mean map as before
    assert len({entries[f"energy_in_box_{n}"] for n in ("a1", "a2", "a3")}) == 3  # three different maps
