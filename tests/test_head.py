"""AIBHead on a backbone of the user's own; the same pipeline as the registered models; any channel count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax import AIBHead, ObjectiveConfig, aib_loss, create_model
from ib_attention_jax.models import ConvMeanHead, MLPDecoder, VariationalAttention
from ib_attention_jax.models.small import SmallEncoder, SmallFront

RNGS = {"attention": jax.random.key(1), "latent": jax.random.key(2)}


class TinyNet(nn.Module):
    """A user's backbone in plain Flax (two convs, one pool) with the AIB head on its 8x8 map."""

    num_anchors: int = 0
    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train=False, **kwargs):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), (2, 2))
        return AIBHead(latent_dim=6, num_classes=self.num_classes, num_anchors=self.num_anchors, name="head")(
            x, train=train, **kwargs)


def _init(module, x):
    return module.init({"params": jax.random.key(0), **RNGS}, x, deterministic=True)


def test_head_on_a_user_backbone_has_the_aib_parts_and_shapes():
    x = jax.random.normal(jax.random.key(3), (4, 16, 16, 2))
    net = TinyNet(num_anchors=3)
    variables = _init(net, x)
    head = variables["params"]["head"]
    assert set(head) == {"attention", "quantizer", "encoder", "decoder"}
    assert set(head["attention"]) == {"mean_head", "std_conv"}
    assert head["encoder"]["fc"]["kernel"].shape == (16, 12)  # global pool of 16 channels -> 2K
    assert head["decoder"]["fc2"]["kernel"].shape == (6, 5)
    assert head["quantizer"]["anchors"].shape == (3,)
    out = net.apply(variables, x, num_samples=2, rngs=RNGS)
    assert out.logits.shape == (4, 5) and out.sample_logits.shape == (2, 2, 4, 5)
    assert out.attention.mean.shape == (4, 8, 8, 1) and out.attention_used.shape == (2, 4, 8, 8, 1)
    assert out.latent.samples.shape == (2, 8, 6) and out.stats.shape == (8, 12)
    assert set(np.unique(np.asarray(out.attention_used))) <= set(np.asarray(head["quantizer"]["anchors"]).tolist())
    mean = net.apply(variables, x, deterministic=True)
    np.testing.assert_array_equal(mean.attention.samples[0], mean.attention.mean)  # zero noise: sample = mean
    total, parts = aib_loss(out, jnp.arange(4) % 5, ObjectiveConfig())
    assert {"ce", "kl", "vq_loss", "commit_loss", "total"} <= set(parts) and np.isfinite(float(total))


def test_head_gradients_reach_backbone_attention_and_anchors():
    x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
    net = TinyNet(num_anchors=3)
    variables = _init(net, x)

    def loss(params):
        return aib_loss(net.apply({"params": params}, x, rngs=RNGS), jnp.arange(4) % 5)[0]

    grads = jax.grad(loss)(variables["params"])
    for path in (("Conv_0", "kernel"), ("head", "attention", "mean_head", "conv", "kernel"),
                 ("head", "quantizer", "anchors"), ("head", "encoder", "fc", "kernel")):
        g = grads
        for key in path:
            g = g[key]
        assert float(jnp.max(jnp.abs(g))) > 0, path


class FrontAndHead(nn.Module):
    """small_aib rebuilt by a user: its front, then AIBHead with small_aib's encoder and decoder."""

    @nn.compact
    def __call__(self, x, **kwargs):
        f = SmallFront(conv_impl="xla", name="front")(x, train=kwargs.get("train", False))
        # Parts built with parent=None nest under the head (built plainly here they would be this module's).
        attention = VariationalAttention(ConvMeanHead(conv_impl="xla", parent=None), conv_impl="xla", parent=None)
        head = AIBHead(latent_dim=64, attention=attention, encoder=SmallEncoder(128, conv_impl="xla", parent=None),
                       decoder=MLPDecoder(10, parent=None), name="head")
        return head(f, **kwargs)


def test_head_runs_the_registered_models_pipeline():
    # Same submodules, same weights: the head gives small_aib's outputs exactly (one pipeline, not a copy).
    model = create_model("small_aib", conv_impl="xla")
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    variables = _init(model, x)
    params = dict(variables["params"])
    front = params.pop("front")
    user = {"params": {"front": front, "head": params},
            "batch_stats": {"front": variables["batch_stats"]["front"],
                            "head": {"encoder": variables["batch_stats"]["encoder"]}}}
    assert jax.tree_util.tree_structure(_init(FrontAndHead(), x)) == jax.tree_util.tree_structure(user)
    # zero noise (the noise keys fold in the module path, which the head lengthens), 3 x 3 samples
    ours = FrontAndHead().apply(user, x, num_samples=3, deterministic=True)
    ref = model.apply(variables, x, num_samples=3, deterministic=True)
    for a, b in ((ours.logits, ref.logits), (ours.attention.samples, ref.attention.samples),
                 (ours.latent.samples, ref.latent.samples), (ours.stats, ref.stats)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_head_without_decoder_stops_at_the_latent():
    x = jax.random.normal(jax.random.key(5), (3, 6, 6, 4))
    head = AIBHead(latent_dim=5)
    variables = _init(head, x)
    assert "decoder" not in variables["params"]
    out = head.apply(variables, x, num_samples=2, rngs=RNGS)
    assert out.logits is None and out.sample_logits is None
    assert out.latent.mean.shape == (6, 5) and out.latent.samples.shape == (2, 6, 5)


def test_head_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"feature map \(batch, height, width, channels\).*\(3, 8\)"):
        _init(AIBHead(latent_dim=4, num_classes=2), jnp.zeros((3, 8)))

    class FlatEncoder(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(7)(jnp.mean(x, axis=(1, 2)))

    with pytest.raises(ValueError, match=r"encoder must map .* \(6, 8\) .* got \(6, 7\)"):
        AIBHead(latent_dim=4, num_classes=2, encoder=FlatEncoder()).init(
            {"params": jax.random.key(0), **RNGS}, jnp.zeros((3, 4, 4, 2)), num_samples=2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        AIBHead(latent_dim=4, num_classes=2).init({"params": jax.random.key(0), **RNGS}, jnp.zeros((3, 4, 4, 2)),
                                                  num_samples=0)


@pytest.mark.parametrize("name", ["small_aib", "small_plain", "small_abn"])
def test_one_channel_images_train_the_registered_small_models(name):
    model = create_model(name, conv_impl="xla")
    x = jax.random.normal(jax.random.key(6), (4, 32, 32, 1))
    variables = _init(model, x)
    assert variables["params"]["front"]["conv1"]["conv"]["kernel"].shape == (3, 3, 1, 32)
    out, _ = model.apply(variables, x, train=True, rngs={**RNGS, "dropout": jax.random.key(3)},
                         mutable=["batch_stats"])
    assert out.logits.shape == (4, 10) and np.all(np.isfinite(np.asarray(out.logits)))


def test_one_channel_images_fit_the_official_models_by_shape_inference():
    for name in ("vgg_aib", "wrn_aib", "cub_vgg16_aib"):
        size = 224 if name.startswith("cub") else 32
        shapes = jax.eval_shape(lambda x, name=name: _init(create_model(name), x),
                                jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32))
        first = jax.tree_util.tree_leaves(shapes["params"]["front"])
        assert any(leaf.shape[2:] == (1, 64) or leaf.shape[2:] == (1, 16) for leaf in first), name
