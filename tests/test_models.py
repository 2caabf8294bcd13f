"""Every registered model: output shapes (by eval_shape), parameter counts, errors, and a real run of small_aib."""

import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models.registry import create_model, get_spec, list_models


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official_parity"
N, BATCH = 3, 2

# family -> (h, w, c of the attended feature map, K)
FAMILY_SHAPES = {"vgg": (16, 16, 256, 256), "wrn": (16, 16, 320, 512), "cub_vgg16": (14, 14, 512, 256),
                 "cub_wrn50_2": (14, 14, 1024, 256), "small": (16, 16, 32, 64)}
ANCHORS = {"vgg_aib_qt": 20, "wrn_aib_qt": 50, "cub_vgg16_aib_qt": 20, "cub_wrn50_2_aib_qt": 20, "small_aib_qt": 8}

# (params, batch_stats) element counts with the default classes, K and anchors; batch_stats holds
# each BatchNorm's running mean and variance and its num_batches_tracked scalar.
PARAM_COUNTS = {
    "vgg_aib": (20040789, 10511), "vgg_aib_qt": (20040809, 10511),
    "wrn_aib": (65004500, 28890), "wrn_aib_qt": (65004550, 28890),
    "cub_vgg16_aib": (17196307, 0), "cub_vgg16_aib_qt": (24275751, 0),
    "cub_wrn50_2_aib": (109990675, 96959), "cub_wrn50_2_aib_qt": (109990695, 96959),
    "small_aib": (124373, 516), "small_aib_qt": (124381, 516),
    "vgg_plain": (19712586, 10511), "wrn_plain": (36479194, 17977),
    "cub_vgg16_plain": (15636488, 0), "cub_wrn50_2_plain": (67244040, 68277), "small_plain": (104042, 516),
}
FIXTURE_MODELS = {"vgg_aib_cifar10": "vgg_aib", "vgg_aib_qt20_cifar10": "vgg_aib_qt", "wrn_aib_cifar10": "wrn_aib",
                  "wrn_aib_qt50_cifar10": "wrn_aib_qt", "cub_vgg16_aib": "cub_vgg16_aib"}
RNGS = ("params", "attention", "latent", "dropout")


def _rngs(seed=0, names=RNGS):
    return {name: _key(seed + i) for i, name in enumerate(names)}


def _abstract_run(model, image_size, num_samples=N, batch=BATCH):
    """(variables, output) of init + apply as ShapeDtypeStructs."""
    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)

    def run(x):
        variables = model.init(_rngs(), x, num_samples=num_samples)
        return variables, model.apply(variables, x, num_samples=num_samples, rngs=_rngs(10))

    return jax.eval_shape(run, x)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def test_registry_lists_every_model():
    models = [n for n in list_models() if not get_spec(n).baseline]  # LTPA and ABN: tests/test_baselines.py
    assert set(models) == set(PARAM_COUNTS)
    for name in models:
        spec = get_spec(name)
        assert spec.name == name and spec.family in FAMILY_SHAPES
        assert spec.quantized == (name in ANCHORS) and spec.num_anchors == ANCHORS.get(name, 0)
        assert spec.plain == name.endswith("_plain")


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_output_shapes_and_parameter_counts(name):
    spec = get_spec(name)
    h, w, c, k = FAMILY_SHAPES[spec.family]
    classes, rows = spec.num_classes, N * BATCH
    variables, out = _abstract_run(create_model(name), spec.image_size)

    assert (_count(variables["params"]), _count(variables.get("batch_stats", {}))) == PARAM_COUNTS[name]
    assert set(variables) <= {"params", "batch_stats"}
    assert out.logits.shape == (BATCH, classes) and out.logits.dtype == jnp.float32
    assert out.features.shape == (BATCH, h, w, c)
    if spec.plain:
        for field in ("attention", "attention_used", "quantizer", "stats", "latent", "sample_logits"):
            assert getattr(out, field) is None, field
        assert "attention" not in variables["params"] and "latent" not in variables["params"]
        return
    for field in ("logit", "mean", "std_pre", "std"):
        assert getattr(out.attention, field).shape == (BATCH, h, w, 1), field
    assert out.attention.samples.shape == (N, BATCH, h, w, 1)
    assert out.attention_used.shape == (N, BATCH, h, w, 1)
    assert out.stats.shape == (rows, 2 * k)
    assert out.latent.mean.shape == out.latent.std.shape == (rows, k)
    assert out.latent.samples.shape == (N, rows, k)
    assert out.sample_logits.shape == (N, N, BATCH, classes)
    if spec.quantized:
        q = ANCHORS[name]
        assert variables["params"]["quantizer"]["anchors"].shape == (q,)
        assert out.quantizer.quantized.shape == out.quantizer.index.shape == (N, BATCH, h, w, 1)
        assert jnp.issubdtype(out.quantizer.index.dtype, jnp.integer)
        assert out.quantizer.vq_loss.shape == out.quantizer.commit_loss.shape == out.quantizer.perplexity.shape == ()
        assert out.quantizer.usage.shape == (q,)
    else:
        assert out.quantizer is None and "quantizer" not in variables["params"]


@pytest.mark.parametrize("fixture,name", list(FIXTURE_MODELS.items()))
def test_parameter_counts_equal_the_official_state_dict(fixture, name):
    manifest = json.loads((FIXTURES / f"{fixture}_seed0.json").read_text())
    aliases = set(manifest.get("aliases", {}))
    params = stats = 0
    for key, shape, _ in manifest["state_dict"]:
        if key in aliases:
            continue
        if key.endswith((".running_mean", ".running_var", ".num_batches_tracked")):
            stats += int(np.prod(shape))
        else:
            params += int(np.prod(shape))
    assert manifest["num_classes"] == get_spec(name).num_classes
    assert manifest["latent_dim_K"] == FAMILY_SHAPES[get_spec(name).family][3]
    assert manifest["constructor_args"].get("qt_num", 0) == ANCHORS.get(name, 0)
    assert PARAM_COUNTS[name] == (params, stats)


def test_unknown_model_raises_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet_aib'") as err:
        create_model("resnet_aib")
    for name in list_models():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="registered models"):
        get_spec("vgg")


@pytest.mark.parametrize("name,kwargs,match", [
    ("small_plain", {"latent_dim": 8}, "plain"), ("vgg_plain", {"num_anchors": 20}, "plain"),
    ("small_aib", {"num_anchors": 8}, "no quantiser"), ("small_aib_qt", {"num_anchors": 0}, "num_anchors"),
    ("small_aib", {"num_classes": 0}, "num_classes"),
    ("small_aib", {"widen": 4}, "invalid option for small_aib: widen; it takes latent_dim, num_anchors"),
])
def test_invalid_create_model_options_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


def test_a_type_error_inside_a_builder_is_not_reported_as_an_invalid_option(monkeypatch):
    import dataclasses

    from ib_attention_jax.models import registry

    def broken_builder(num_classes, *, latent_dim=8, num_anchors=0, model_name="broken"):
        raise TypeError("a bug inside the builder")

    spec = dataclasses.replace(registry.get_spec("small_aib"), name="broken", builder=broken_builder)
    monkeypatch.setitem(registry.MODELS, "broken", spec)
    with pytest.raises(TypeError, match="a bug inside the builder"):
        create_model("broken", latent_dim=4)
    with pytest.raises(ValueError, match="invalid option for broken: depth; it takes latent_dim"):
        create_model("broken", depth=4)


@pytest.mark.parametrize("name,shape", [
    ("small_aib", (2, 3, 32, 32)), ("small_aib", (2, 28, 28, 3)), ("small_plain", (2, 32, 32)),
    ("vgg_aib", (2, 3, 32, 32)), ("cub_vgg16_aib", (2, 32, 32, 3)), ("wrn_plain", (2, 3, 32, 32)),
])
def test_wrong_image_shape_raises_with_the_expected_shape(name, shape):
    size = get_spec(name).image_size
    with pytest.raises(ValueError, match=rf"\(batch, {size}, {size}, channels\)") as err:
        jax.eval_shape(lambda x: create_model(name).init(_rngs(), x), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert str(shape) in str(err.value) and "NHWC" in str(err.value)


def test_num_samples_must_be_positive():
    with pytest.raises(ValueError, match="num_samples"):
        _abstract_run(create_model("small_aib"), 32, num_samples=0)


@pytest.mark.parametrize("name", ["small_aib", "vgg_aib", "wrn_plain"])
def test_num_classes_changes_the_logits(name):
    spec = get_spec(name)
    _, out = _abstract_run(create_model(name, num_classes=100), spec.image_size)
    assert out.logits.shape == (BATCH, 100)
    if not spec.plain:
        assert out.sample_logits.shape == (N, N, BATCH, 100)


def test_anchor_options():
    variables, out = _abstract_run(create_model("small_aib_qt", num_anchors=5, anchor_init="uniform"), 32)
    assert variables["params"]["quantizer"]["anchors"].shape == (5,) and out.quantizer.usage.shape == (5,)
    with pytest.raises(ValueError, match="anchor_init"):
        _abstract_run(create_model("small_aib_qt", anchor_init="kmeans"), 32)


def test_latent_dim_option():
    _, out = _abstract_run(create_model("small_aib", latent_dim=16), 32)
    assert out.stats.shape == (N * BATCH, 32) and out.latent.samples.shape == (N, N * BATCH, 16)


@pytest.fixture(scope="module")
def small():
    """small_aib with random variables (numpy, from the shape tree: no init to compile) and a jitted apply.

    XLA's convolution compiles about 4x faster than the 'slices' form on CPU; test_conv checks they agree.
    """
    model = create_model("small_aib", conv_impl="xla")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init({"params": _key(0)}, x, deterministic=True), x)
    rng = np.random.default_rng(1)

    def fill(path, sds):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, sds.shape), sds.dtype)
        scale = 1.0 / np.sqrt(np.prod(sds.shape[:-1])) if len(sds.shape) > 1 else 0.1
        return jnp.asarray(scale * rng.standard_normal(sds.shape), sds.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    apply = jax.jit(lambda v, x, rngs, n, det: model.apply(v, x, num_samples=n, deterministic=det, rngs=rngs),
                    static_argnums=(3, 4))
    return model, variables, x, apply


def test_small_aib_deterministic_path_is_reproducible(small):
    model, variables, x, apply = small
    a = apply(variables, x, _rngs(1, ("attention", "latent")), 2, True)
    b = apply(variables, x, _rngs(5, ("attention", "latent")), 2, True)  # keys are ignored on this path
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.attention.samples[1]), np.asarray(a.attention.mean))
    np.testing.assert_array_equal(np.asarray(a.latent.samples[0]), np.asarray(a.latent.mean))
    assert np.all(np.isfinite(np.asarray(a.logits))) and np.ptp(np.asarray(a.logits)) > 0
    # all n x n sample logits are equal without noise, and the logits are their mean
    np.testing.assert_allclose(np.asarray(a.sample_logits), np.broadcast_to(np.asarray(a.logits), (2, 2, 2, 10)),
                               rtol=1e-6, atol=1e-6)
    # the zero-noise path needs no RNG at all
    out = jax.eval_shape(lambda v, x: model.apply(v, x, num_samples=2, deterministic=True), variables, x)
    assert out.logits.shape == (2, 10)
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda v, x: model.apply(v, x, num_samples=2), variables, x)


def test_small_aib_monte_carlo_path_depends_on_the_keys(small):
    _, variables, x, apply = small
    a = apply(variables, x, _rngs(1, ("attention", "latent")), 4, False)
    a2 = apply(variables, x, _rngs(1, ("attention", "latent")), 4, False)
    b = apply(variables, x, _rngs(7, ("attention", "latent")), 4, False)
    assert a.sample_logits.shape == (4, 4, 2, 10) and a.latent.samples.shape == (4, 8, 64)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(a2.logits))
    assert not np.allclose(np.asarray(a.logits), np.asarray(b.logits))
    assert not np.allclose(np.asarray(a.attention.samples[0]), np.asarray(a.attention.samples[1]))
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(a.sample_logits).mean((0, 1)), rtol=1e-5, atol=1e-6)
    # features do not depend on the noise; attention_used is the sampled map (no quantiser)
    np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
    np.testing.assert_array_equal(np.asarray(a.attention_used), np.asarray(a.attention.samples))


def test_small_aib_train_updates_batch_stats(small):
    model, variables, x, _ = small

    @jax.jit
    def step(variables, x):
        return model.apply(variables, x, train=True, num_samples=1, rngs=_rngs(3, ("attention", "latent")),
                           mutable=["batch_stats"])

    out, updates = step(variables, x)
    assert set(updates) == {"batch_stats"}
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
    for a, b in zip(jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new), strict=True):
        assert a.shape == b.shape and not np.allclose(np.asarray(a), np.asarray(b))
    assert out.logits.shape == (2, 10)
    with pytest.raises(flax.errors.ModifyScopeVariableError):  # batch_stats must be declared mutable
        model.apply(variables, x, train=True, rngs=_rngs(3, ("attention", "latent")))


def test_wrn_train_needs_and_uses_a_dropout_rng():
    model = create_model("wrn_aib")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(_rngs(), x, deterministic=True), x)

    def train(variables, x, names):
        return model.apply(variables, x, train=True, rngs=_rngs(1, names), mutable=["batch_stats"])

    out, updates = jax.eval_shape(lambda v, x: train(v, x, ("attention", "latent", "dropout")), variables, x)
    assert out.logits.shape == (2, 10)
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        jax.eval_shape(lambda v, x: train(v, x, ("attention", "latent")), variables, x)
    # eval mode needs no dropout rng
    out = jax.eval_shape(lambda v, x: model.apply(v, x, deterministic=True), variables, x)
    assert out.logits.shape == (2, 10)
