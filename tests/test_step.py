"""The single-device train step under plain jax.jit, its public loss, and the data-parallel step built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ib_attention_jax import ObjectiveConfig, StepConfig, TrainState, compute_loss, create_model, make_train_step
from ib_attention_jax.evaluation.step import make_eval_step
from ib_attention_jax.runtime.parallel import AXIS, Runner
from ib_attention_jax.training.step import step_rngs

CONFIG = StepConfig(ObjectiveConfig(), num_samples=2)


def _setup(name="small_aib_qt", batch=8, **model_kwargs):
    model = create_model(name, conv_impl="xla", **model_kwargs)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    labels = (np.arange(batch) % 10).astype(np.int32)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))(jax.random.key(0))
    return model, {"image": images, "label": labels}, variables


def _state(variables, tx):
    return TrainState.create(variables, tx, jax.random.PRNGKey(7))  # uint32[2], as the loop keeps it


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_jitted_single_device_step_needs_no_axis_and_no_index():
    model, batch, variables = _setup()
    tx = optax.adam(3e-3)
    step = jax.jit(make_train_step(model, tx, CONFIG))
    state = _state(variables, tx)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch)  # no "index", no mapped axis
        losses.append(float(metrics["total"]))
    assert int(state.step) == 6 and step.__wrapped__.axis_name is None
    assert losses[-1] < losses[0], losses
    assert {"ce", "kl", "vq_loss", "accuracy", "grad_norm", "anchor_usage", "anchor_perplexity"} <= set(metrics)
    assert float(metrics["anchor_usage"].sum()) == 2 * 8 * 16 * 16  # n samples x b x the 16x16 map
    # the default example ids are arange(b): giving them changes nothing
    with_index = jax.jit(make_train_step(model, tx, CONFIG))(_state(variables, tx), {**batch, "index": np.arange(8)})
    without = jax.jit(make_train_step(model, tx, CONFIG))(_state(variables, tx), batch)
    for a, b in zip(_leaves(with_index[0].params), _leaves(without[0].params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_step_applies_the_gradient_of_compute_loss():
    model, batch, variables = _setup()
    tx = optax.sgd(1.0)
    state = _state(variables, tx)
    rngs = step_rngs(state.key, state.step)
    grads, aux = jax.jit(jax.grad(lambda p: compute_loss(p, state.batch_stats, batch, rngs, model=model,
                                                         objective=CONFIG.objective, num_samples=2), has_aux=True))(
        state.params)
    assert set(aux.parts) >= {"ce", "kl", "total"} and aux.output.logits.shape == (8, 10)
    new_state, metrics = jax.jit(make_train_step(model, tx, CONFIG))(state, batch)
    np.testing.assert_allclose(float(metrics["total"]), float(aux.parts["total"]), rtol=1e-6)
    for old, new, g in zip(_leaves(state.params), _leaves(new_state.params), _leaves(grads), strict=True):
        np.testing.assert_allclose(old - new, g, rtol=1e-4, atol=1e-6)
    # the same statistics; the two programs are compiled apart and may fuse their reductions apart (about 1 ulp)
    for a, b in zip(_leaves(new_state.batch_stats), _leaves(aux.batch_stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_data_parallel_step_is_the_same_function_over_the_data_axis():
    # The Runner's step (shard_map over "data", pmean and psum) on one device equals the plain jitted step.
    model, batch, variables = _setup(bn_axis_name=AXIS)
    tx = optax.sgd(0.05, momentum=0.9)
    single_model, _, _ = _setup()
    single = jax.jit(make_train_step(single_model, tx, CONFIG))
    state = _state(variables, tx)
    s_state, s_metrics = single(state, batch)
    s_state, s_metrics = single(s_state, batch)
    for explicit in (True, False):
        runner = Runner("shard_map", jax.devices()[:1])
        step = make_train_step(model, tx, CONFIG, axis_name=AXIS) if explicit else make_train_step(model, tx, CONFIG)
        parallel = runner.compile_train_step(step)
        pstate = runner.replicate(jax.tree_util.tree_map(np.asarray, state))
        feed = runner.shard_batch({**batch, "index": np.arange(8, dtype=np.int32)})
        pstate, p_metrics = parallel(pstate, feed)
        pstate, p_metrics = parallel(pstate, feed)
        p_state = runner.unreplicate(pstate)
        for a, b in zip(_leaves(p_state.params), _leaves(s_state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for key in ("total", "accuracy", "grad_norm", "anchor_usage"):
            np.testing.assert_allclose(np.asarray(p_metrics[key]), np.asarray(s_metrics[key]), rtol=1e-5)


def test_step_records_its_axis_and_rebuilds_for_another():
    # With axis_name=None the step never names an axis: under pmap it is a per-device step that does not
    # average (so on several devices it would diverge); the axis-name form is the data-parallel one.
    step = make_train_step(create_model("small_plain", conv_impl="xla"), optax.sgd(0.1), CONFIG)
    assert step.axis_name is None and step.for_axis(AXIS).axis_name == AXIS


def test_mask_in_the_batch_excludes_padding_from_the_loss():
    model, batch, variables = _setup("small_aib", batch=4)
    rngs = step_rngs(jax.random.key(3), jnp.asarray(0))
    padded = {"image": np.concatenate([batch["image"], np.full((2, 32, 32, 3), 9.0, np.float32)]),
              "label": np.concatenate([batch["label"], [1, 2]]).astype(np.int32),
              "mask": np.array([True] * 4 + [False] * 2), "index": np.arange(6, dtype=np.int32)}

    def loss(b):  # train=False: BatchNorm uses running statistics, so padding cannot reach the real rows
        return compute_loss(variables["params"], variables["batch_stats"], b, rngs, model=model,
                            objective=ObjectiveConfig(), num_samples=2, train=False)[0]

    np.testing.assert_allclose(float(loss(padded)), float(loss({**batch, "index": np.arange(4)})), rtol=1e-6)
    assert abs(float(loss({k: v for k, v in padded.items() if k != "mask"})) - float(loss(padded))) > 1e-3


def test_eval_step_runs_under_jit_without_index():
    model, batch, variables = _setup("small_aib")
    step = jax.jit(make_eval_step(model, StepConfig(eval_num_samples=2), jax.random.key(1)))
    out = step(_state(variables, optax.sgd(0.1)), batch)
    assert out["pred_mc"].shape == (8,) and out["attention"].shape == (8, 16, 16)


@pytest.mark.parametrize("name", ["small_plain", "small_abn"])
def test_single_device_step_trains_plain_and_baseline_models(name):
    model, batch, variables = _setup(name)
    tx = optax.sgd(0.05)
    state, metrics = jax.jit(make_train_step(model, tx, StepConfig(ObjectiveConfig(beta=0.0))))(
        _state(variables, tx), batch)
    assert int(state.step) == 1 and np.isfinite(float(metrics["total"]))
