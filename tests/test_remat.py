"""--config.remat: the blocks recompute their activations in the backward pass, with the same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ib_attention_jax import ObjectiveConfig, StepConfig, TrainState, create_model, make_train_step
from ib_attention_jax.configs import changes, schema
from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.errors import ConfigError
from ib_attention_jax.training.loop import build_model
from ib_attention_jax.training.remat import POLICIES, with_remat

CONFIG = StepConfig(ObjectiveConfig(), num_samples=2)


def _setup(name: str, batch: int = 4):
    model = create_model(name, conv_impl="xla")
    rng = np.random.default_rng(0)
    feed = {"image": rng.standard_normal((batch, 32, 32, 3)).astype(np.float32),
            "label": (np.arange(batch) % 10).astype(np.int32)}
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))(jax.random.key(0))
    return model, feed, variables


def _one_step(model, variables, feed):
    tx = optax.sgd(0.1, momentum=0.9)
    state = TrainState.create(variables, tx, jax.random.PRNGKey(3))
    step = jax.jit(make_train_step(model, tx, CONFIG))
    return step, state, jax.tree_util.tree_map(np.asarray, step(state, feed))


def _convolutions(step, state, feed) -> int:
    """Convolutions in the step's program as traced (before XLA's optimisation)."""
    return step.lower(state, feed).as_text().count("stablehlo.convolution")


@pytest.mark.parametrize("name,policies", [("small_aib_qt", ("full", "dots_saveable")), ("small_abn", ("full",))])
def test_remat_gives_the_same_step_and_recomputes_the_blocks(name, policies):
    model, feed, variables = _setup(name)
    step, state, (plain_state, plain_metrics) = _one_step(model, variables, feed)
    plain_convs = _convolutions(step, state, feed)
    for policy in policies:
        rematted = with_remat(model, policy)
        assert isinstance(rematted, type(model)) and rematted.remat_policy == policy
        again = jax.jit(lambda k, m=rematted: m.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))(
            jax.random.key(0))
        assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(variables)
        r_step, r_state, (new_state, metrics) = _one_step(rematted, variables, feed)
        # parameters, BatchNorm statistics, optimiser state and every metric, to float32 rounding (the
        # recomputed program is fused differently, so sums may add in another order)
        for a, b in zip(jax.tree_util.tree_leaves((plain_state, plain_metrics)),
                        jax.tree_util.tree_leaves((new_state, metrics)), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        convs = _convolutions(r_step, r_state, feed)
        if policy == "full":
            assert convs > plain_convs, (convs, plain_convs)  # the backward pass runs the blocks' convolutions again
        else:
            assert convs == plain_convs  # convolution outputs are kept: only element-wise work is recomputed
    assert float(np.asarray(plain_metrics["grad_norm"])) > 0


def test_none_is_the_model_itself_and_a_bad_policy_names_the_choices():
    model = create_model("small_aib", conv_impl="xla")
    assert with_remat(model, "none") is model
    with pytest.raises(ConfigError, match="remat='partial' is not one of none, full, dots_saveable"):
        with_remat(model, "partial")
    assert set(POLICIES) == {"none", "full", "dots_saveable"}


def test_the_config_key_builds_the_rematted_model_and_a_restart_may_change_it():
    config = quickstart()
    config.remat = "dots_saveable"
    assert build_model(config, 10).remat_policy == "dots_saveable"
    old, new = schema.resolve(quickstart()), schema.resolve(config)
    (change,) = changes.compare(old.to_dict(), new.to_dict())
    assert (change.key, change.old, change.new, change.refused) == ("remat", "none", "dots_saveable", False)
