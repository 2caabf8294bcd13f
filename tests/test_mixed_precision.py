"""bfloat16 compute with float32 parameters; the KL, the quantiser losses and the logits stay float32."""

import jax
import jax.numpy as jnp
import numpy as np

from ib_attention_jax import create_model
from ib_attention_jax.objectives import ObjectiveConfig, aib_loss


def test_bfloat16_forward_keeps_parameters_and_losses_in_float32():
    model = create_model("small_aib_qt", dtype=jnp.bfloat16, conv_impl="xla")
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, deterministic=True)
    leaves = jax.tree_util.tree_leaves(variables)
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert {leaf.dtype for leaf in leaves if not jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.int32)}

    def loss(params):
        out, mutated = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                   rngs={"attention": jax.random.key(2), "latent": jax.random.key(3)},
                                   mutable=["batch_stats"])
        total, parts = aib_loss(out, jnp.arange(4) % 10, ObjectiveConfig())
        return total, (out, parts, mutated["batch_stats"])

    grads, (out, parts, stats) = jax.grad(loss, has_aux=True)(variables["params"])
    # running statistics are updated in float32 (the BatchNorm step counters are int32)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(stats)} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    assert out.features.dtype == jnp.bfloat16  # the backbone computes in bfloat16
    for value in (out.logits, out.latent.mean, out.latent.std, out.attention.mean, out.quantizer.vq_loss,
                  parts["kl"], parts["commit_loss"], parts["total"]):
        assert value.dtype == jnp.float32
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(float(parts["total"]))
    full = create_model("small_aib_qt", conv_impl="xla")
    ref = full.apply(variables, x, deterministic=True)
    half = model.apply(variables, x, deterministic=True)
    assert float(jnp.max(jnp.abs(ref.logits - half.logits))) < 0.1 * float(jnp.max(jnp.abs(ref.logits))) + 0.05
