"""Official state_dicts <-> Flax variables: exact round trips, fixture key sets, prefixes, aliases and errors."""

import functools
import json
import pathlib
import zlib

import jax
import numpy as np
import pytest
from flax import traverse_util

from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest, synthetic_state_dict
from ib_attention_jax.interop.state_dict import (
    StateDictError,
    from_state_dict,
    strip_module_prefix,
    to_state_dict,
    variable_shapes,
)
from ib_attention_jax.models.cub import PooledLinearEncoder
from ib_attention_jax.models.registry import create_model, get_spec, list_models


def _key(seed):
    """An RBG PRNG key: any key type serves these tests, and RBG compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official_parity"
FIXTURE_NAMES = ["vgg_aib_cifar10", "vgg_aib_qt20_cifar10", "wrn_aib_cifar10", "wrn_aib_qt50_cifar10",
                 "cub_vgg16_aib"]
FIXTURE_MODELS = {"Vgg16_bn_lrn_VANet": "vgg_aib", "Vgg16_bn_lrn_VANet_QT": "vgg_aib_qt", "WideResNet": "wrn_aib",
                  "WideResNet_QT": "wrn_aib_qt", "VaNet_vgg": "cub_vgg16_aib"}
# Flax -> official -> Flax round trips. With the fixture models (official -> Flax -> official, below) and
# cub_wrn50_2_aib_qt (its alias test; cub_wrn50_2_aib is that model without anchors) every family is converted
# both ways; the big plain WRNs are checked by their key sets (test_plain_wrn_names...), as each big
# conversion takes seconds on CPU.
ROUND_TRIP = ["small_aib_qt", "small_aib", "small_plain", "vgg_plain", "cub_vgg16_aib_qt", "cub_vgg16_plain"]


@functools.cache
def manifest(name):
    return json.loads((FIXTURES / f"{name}_seed0.json").read_text())


@functools.cache
def manifest_state_dict(name):
    return state_dict_from_manifest(manifest(name))


def fixture_model(name):
    m = manifest(name)
    kwargs = {"latent_dim": m["latent_dim_K"]}
    if m["constructor_args"].get("qt_num"):
        kwargs["num_anchors"] = m["constructor_args"]["qt_num"]
    return create_model(FIXTURE_MODELS[m["official"]["class_name"]], m["num_classes"], **kwargs)


def random_variables(model, seed=0):
    """Distinct random numpy values for every variable (running variances positive), from the shape tree."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(dict(variable_shapes(model)))
    out = {}
    for path, sds in flat.items():
        if path[-1] == "var":
            out[path] = rng.uniform(0.5, 1.5, sds.shape).astype(sds.dtype)
        elif path[-1] == "num_batches_tracked":
            out[path] = rng.integers(1, 1000, sds.shape).astype(sds.dtype)
        else:
            out[path] = rng.standard_normal(sds.shape, dtype=np.float32).astype(sds.dtype)
    return traverse_util.unflatten_dict(out)


@functools.cache
def small_qt_init():
    """A real ``model.init`` of small_aib_qt (jitted: eager init compiles every op separately).

    conv_impl='xla' only because it compiles faster on CPU; the parameters do not depend on it (test_conv).
    """
    model = create_model("small_aib_qt", conv_impl="xla")
    x = np.zeros((1, 32, 32, 3), np.float32)
    return model, jax.jit(lambda key: model.init({"params": key}, x, deterministic=True))(_key(0))


def zero_variables(model):
    """Read-only zero views of every variable: enough to list the exported keys without allocating."""
    flat = traverse_util.flatten_dict(dict(variable_shapes(model)))
    return traverse_util.unflatten_dict({p: np.broadcast_to(np.zeros((), s.dtype), s.shape) for p, s in flat.items()})


def _bits_equal(x, y):
    """Bitwise equality (tells -0.0 from 0.0, NaN payloads apart) without copying the arrays."""
    unsigned = f"u{x.dtype.itemsize}"
    return np.array_equal(x.view(unsigned), y.view(unsigned))


def assert_trees_bitwise_equal(a, b):
    fa, fb = traverse_util.flatten_dict(dict(a)), traverse_util.flatten_dict(dict(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert _bits_equal(x, y), k


def assert_state_dicts_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert _bits_equal(a[k], b[k]), k


def test_round_trip_list_covers_every_family():
    fixture_models = {FIXTURE_MODELS[manifest(f)["official"]["class_name"]] for f in FIXTURE_NAMES}
    converted = set(ROUND_TRIP) | fixture_models | {"cub_wrn50_2_aib_qt"}
    models = [n for n in list_models() if not get_spec(n).baseline]  # LTPA and ABN: tests/test_baselines.py
    assert {get_spec(n).family for n in converted} == {get_spec(n).family for n in models}
    assert converted | {"cub_wrn50_2_aib", "wrn_plain", "cub_wrn50_2_plain"} == set(models)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_flax_to_official_to_flax_is_exact(name):
    if name == "small_aib_qt":
        model, variables = small_qt_init()
    else:
        model = create_model(name)
        variables = random_variables(model)
    sd = to_state_dict(model, variables)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    back = from_state_dict(model, sd)
    assert_trees_bitwise_equal(back, variables)
    assert set(back) == ({"params", "batch_stats"} if "batch_stats" in variables else {"params"})


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_fixture_state_dict_round_trip_and_key_set(fixture):
    """Official (synthetic) state_dict -> Flax -> official is exact, with exactly the manifest's keys."""
    m, sd = manifest(fixture), manifest_state_dict(fixture)
    model = fixture_model(fixture)
    variables = from_state_dict(model, sd)
    exported = to_state_dict(model, variables)
    assert set(exported) == {e[0] for e in m["state_dict"]}
    for key, shape, dtype in m["state_dict"]:
        assert exported[key].shape == tuple(shape), key
        assert exported[key].dtype == np.dtype(dtype), key
    assert_state_dicts_bitwise_equal(exported, sd)
    aliases = m.get("aliases", {})
    for alias, canonical in aliases.items():
        np.testing.assert_array_equal(exported[alias], exported[canonical])
    counters = [k for k in exported if k.endswith(".num_batches_tracked")]
    assert all(exported[k].dtype == np.int64 and exported[k].shape == () for k in counters)
    if fixture.startswith("cub"):
        assert not counters


def _export_without_aliases(name):
    model = create_model(name)
    return to_state_dict(model, zero_variables(model), include_aliases=False)


def test_plain_wrn_names_are_the_official_trunk_names():
    trunk = ("conv1.", "bn1.", "block1.", "block2.", "block3.")
    official = {k: tuple(shape) for k, shape, _ in manifest("wrn_aib_cifar10")["state_dict"] if k.startswith(trunk)}
    plain = _export_without_aliases("wrn_plain")
    assert set(plain) == set(official) | {"fc.weight", "fc.bias"}
    assert {k: plain[k].shape for k in official} == official
    assert plain["fc.weight"].shape == (10, 640) and plain["fc.bias"].shape == (10,)

    trunk = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    plain, aib = _export_without_aliases("cub_wrn50_2_plain"), _export_without_aliases("cub_wrn50_2_aib")
    shared = {k for k in aib if k.startswith(trunk)}
    assert "layer4.2.bn3.num_batches_tracked" in shared and "layer1.0.downsample.0.weight" in shared
    assert set(plain) == shared | {"fc.weight", "fc.bias"}
    assert all(plain[k].shape == aib[k].shape for k in shared)
    assert plain["fc.weight"].shape == (200, 2048)


@pytest.mark.parametrize("plain_name", ["wrn_plain", "cub_wrn50_2_plain"])
def test_plain_exports_have_no_aib_alias_keys(plain_name):
    # BUG (library): to_state_dict applies the family's AIB aliases to the plain baselines too, so
    # wrn_plain exports encode.0.* / encode.1.* and cub_wrn50_2_plain exports encode.0.* copies of
    # block3/bn1/layer4: modules a plain WideResNet / torchvision wide_resnet50_2 does not have, which
    # load_state_dict(strict=True) rejects as unexpected keys.
    model = create_model(plain_name)
    sd = to_state_dict(model, zero_variables(model))
    assert not [k for k in sd if k.startswith(("encode.", "att_module_mu."))]


def test_module_prefixed_state_dict_loads():
    model, variables = small_qt_init()
    sd = to_state_dict(model, variables)
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    assert strip_module_prefix(prefixed).keys() == sd.keys()
    assert_trees_bitwise_equal(from_state_dict(model, prefixed), variables)
    # a prefix on only some keys is not DataParallel's: nothing is stripped
    partial = dict(sd)
    key = next(iter(partial))
    partial[f"module.{key}"] = partial.pop(key)
    assert strip_module_prefix(partial).keys() == partial.keys()
    with pytest.raises(StateDictError, match=f"missing keys: .*{key}"):
        from_state_dict(model, partial)


def test_module_prefixed_official_vgg_state_dict_loads():
    model, sd = fixture_model("vgg_aib_qt20_cifar10"), manifest_state_dict("vgg_aib_qt20_cifar10")
    loaded = from_state_dict(model, {f"module.{k}": v for k, v in sd.items()})
    assert_trees_bitwise_equal(loaded, from_state_dict(model, sd))


def test_alias_only_state_dict_loads():
    # A WRN-10-2 has the official WRN names (aliases included) at a fraction of the size.
    model = create_model("wrn_aib_qt", depth=10, widen=2, latent_dim=16)
    variables = random_variables(model, seed=2)
    sd = to_state_dict(model, variables)
    aliases = {k for k in sd if k.startswith(("encode.0.", "encode.1.", "att_module_mu."))}
    canonical = {k for k in sd if k.startswith(("block3.", "bn1.", "att_block3.", "bn_att", "att_conv"))}
    assert len(aliases) == len(canonical) > 0
    assert "encode.0.layer.0.conv1.weight" in sd and "att_module_mu.6.num_batches_tracked" in sd
    assert_trees_bitwise_equal(from_state_dict(model, {k: v for k, v in sd.items() if k not in canonical}),
                               variables)
    # without aliases and counters: only the unique tensors
    bare = to_state_dict(model, variables, include_aliases=False, include_counters=False)
    assert set(bare) == set(sd) - aliases - {k for k in sd if k.endswith(".num_batches_tracked")}
    uncounted = traverse_util.unflatten_dict({p: np.zeros_like(v) if p[-1] == "num_batches_tracked" else v
                                              for p, v in traverse_util.flatten_dict(variables).items()})
    assert_trees_bitwise_equal(from_state_dict(model, bare), uncounted)  # a missing counter loads as 0


def test_cub_wrn50_2_round_trip_aliases_and_dead_tmp_layer():
    model = create_model("cub_wrn50_2_aib_qt")
    variables = random_variables(model, seed=3)
    sd = to_state_dict(model, variables)
    alias_keys = [k for k in sd if k.startswith(("encode.0.", "att_module_mu.0."))]
    assert alias_keys and "encode.0.0.conv1.weight" in sd and "att_module_mu.0.2.bn3.running_var" in sd
    assert "emb.weight" in sd and sd["emb.weight"].shape == (1, 20)
    assert not any(k.startswith("tmp_layer.") for k in sd)
    alias_only = {k: v for k, v in sd.items() if not k.startswith(("layer4.", "att_layer4."))}
    assert len(alias_only) == len(sd) - len(alias_keys)
    alias_only["tmp_layer.0.conv1.weight"] = np.zeros((256, 1024, 1, 1), np.float32)  # dead module: ignored
    # aliases are written from their canonical tensors, so this is also the Flax -> official -> Flax round trip
    assert_trees_bitwise_equal(from_state_dict(model, alias_only), variables)


@pytest.fixture(scope="module")
def small_sd():
    model, variables = small_qt_init()
    return model, to_state_dict(model, variables)


def test_missing_key_is_named(small_sd):
    model, sd = small_sd
    key = "front.conv1.conv.weight"
    assert key in sd
    with pytest.raises(StateDictError, match=rf"missing keys: {key}\b"):
        from_state_dict(model, {k: v for k, v in sd.items() if k != key})


def test_unexpected_key_is_named(small_sd):
    model, sd = small_sd
    with pytest.raises(StateDictError, match=r"unexpected keys: extra\.head\.weight"):
        from_state_dict(model, {**sd, "extra.head.weight": np.zeros(3, np.float32)})
    # counters are not unexpected
    from_state_dict(model, {**sd, "front.conv1.bn.num_batches_tracked": np.zeros((), np.int64)})


def test_misshaped_key_is_named(small_sd):
    model, sd = small_sd
    key = "encoder.conv3.conv.weight"
    assert sd[key].shape == (64, 32, 3, 3)  # OIHW
    bad = {**sd, key: np.zeros((64, 32, 1, 1), np.float32)}
    msg = rf"mis-shaped keys: {key}: got \(64, 32, 1, 1\), expected \(64, 32, 3, 3\)"
    with pytest.raises(StateDictError, match=msg):
        from_state_dict(model, bad)
    bad = {**sd, "decoder.fc2.weight": sd["decoder.fc2.weight"].T}  # (in, out) instead of (out, in)
    with pytest.raises(StateDictError, match=r"decoder\.fc2\.weight: got \(64, 10\), expected \(10, 64\)"):
        from_state_dict(model, bad)


def test_all_problems_are_reported_together(small_sd):
    model, sd = small_sd
    bad = {k: v for k, v in sd.items() if k not in ("quantizer.weight", "decoder.fc1.bias")}
    bad["foo"] = np.zeros(1)
    with pytest.raises(StateDictError) as err:
        from_state_dict(model, bad)
    msg = str(err.value)
    assert "decoder.fc1.bias" in msg and "quantizer.weight" in msg
    assert "unexpected keys: foo" in msg and "small_aib_qt" in msg
    assert isinstance(err.value, ValueError)


def test_misshaped_nchw_flatten_linear_is_a_state_dict_error():
    # BUG (library): a CUB encode.2.weight whose width is not a multiple of 9 fails in numpy's
    # reshape inside _from_torch ("cannot reshape array ...") instead of a StateDictError naming the key.
    model, sd = fixture_model("cub_vgg16_aib"), manifest_state_dict("cub_vgg16_aib")
    bad = {**sd, "encode.2.weight": np.zeros((512, 4607), np.float32)}
    with pytest.raises(StateDictError, match=r"encode\.2\.weight: got \(512, 4607\), expected \(512, 4608\)"):
        from_state_dict(model, bad)


def test_export_respects_a_non_default_image_size():
    # BUG (library): variable_shapes() builds its dummy input from the spec's image size
    # (32) instead of the model's, so a vgg_aib built for 96x96 inputs (STL-10; the dense
    # conv then has a 3x3 kernel) cannot be exported or imported: check_images raises.
    model = create_model("vgg_aib", image_size=96)
    shapes = variable_shapes(model)
    assert shapes["params"]["encoder"]["dense"]["kernel"].shape == (3, 3, 512, 512)
    sd = to_state_dict(model, random_variables(model))
    assert sd["encode.5.weight"].shape == (512, 512, 3, 3)


def test_cub_nchw_flatten_permutation():
    sd = manifest_state_dict("cub_vgg16_aib")
    model = fixture_model("cub_vgg16_aib")
    params = from_state_dict(model, sd)["params"]["encoder"]
    weight, bias = sd["encode.2.weight"].astype(np.float64), sd["encode.2.bias"].astype(np.float64)
    assert weight.shape == (512, 512 * 9) and params["fc"]["kernel"].shape == (512 * 9, 512)
    pooled = np.random.default_rng(0).standard_normal((1, 3, 3, 512))  # NHWC
    torch_out = pooled.transpose(0, 3, 1, 2).reshape(1, -1) @ weight.T + bias  # PyTorch: NCHW flatten
    ours = pooled.reshape(1, -1) @ np.asarray(params["fc"]["kernel"], np.float64) + bias
    np.testing.assert_allclose(ours, torch_out, rtol=1e-10, atol=1e-10)
    # the Flax encoder itself (adaptive pool of a 3x3 map is the identity) agrees
    flax_out = PooledLinearEncoder(512).apply({"params": params}, pooled.astype(np.float32))
    np.testing.assert_allclose(np.asarray(flax_out, np.float64), torch_out, rtol=1e-4, atol=1e-4)
    # a pure NCHW->NHWC index check: torch column c*9 + i*3 + j is Flax row (i*3 + j)*512 + c
    kernel = np.asarray(params["fc"]["kernel"])
    for c, i, j in [(0, 0, 0), (5, 1, 2), (511, 2, 1), (300, 2, 2)]:
        np.testing.assert_array_equal(kernel[(i * 3 + j) * 512 + c], sd["encode.2.weight"][:, c * 9 + i * 3 + j])


def test_synthetic_state_dict_is_deterministic_and_follows_the_recipe():
    m = manifest("vgg_aib_qt20_cifar10")
    a, b = state_dict_from_manifest(m), manifest_state_dict("vgg_aib_qt20_cifar10")
    assert list(a) == [e[0] for e in m["state_dict"]]  # insertion-ordered like the manifest
    assert_state_dicts_bitwise_equal(a, b)
    for key, value in a.items():
        if key.endswith(".num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == () and value == 0
        else:
            assert value.dtype == np.float32
    name = "features.0.op.0.weight"
    draw = np.random.default_rng([m["seed"], zlib.crc32(name.encode())]).standard_normal((64, 3, 3, 3))
    expected = (m["weight_gain"] * draw / np.sqrt(27)).astype(np.float32)
    np.testing.assert_array_equal(a[name], expected)
    assert np.all((a["features.0.op.1.running_var"] >= 1.0) & (a["features.0.op.1.running_var"] <= 1.5))
    assert abs(float(a["features.0.op.1.weight"].mean()) - 1.0) < 0.1
    anchors = a["emb.weight"]
    assert anchors.shape == (1, 20)
    np.testing.assert_allclose(anchors[0], np.linspace(0, 1, 20), atol=0.05)
    assert not np.array_equal(anchors[0], np.linspace(0, 1, 20).astype(np.float32))


def test_synthetic_aliases_copy_their_canonical_tensor():
    m = manifest("wrn_aib_cifar10")
    sd = manifest_state_dict("wrn_aib_cifar10")
    assert len(m["aliases"]) == 120
    for alias, canonical in m["aliases"].items():
        assert sd[alias].tobytes() == sd[canonical].tobytes() and sd[alias].dtype == sd[canonical].dtype
        assert sd[alias] is not sd[canonical]


def test_synthetic_seed_and_alias_errors():
    spec = [("a.weight", (3, 4), "float32"), ("b.bias", (2,), "float32"), ("c.weight", (3, 4), "float32")]
    one = synthetic_state_dict(spec, 0, {"c.weight": "a.weight"})
    np.testing.assert_array_equal(one["a.weight"], synthetic_state_dict(spec, 0)["a.weight"])
    assert not np.array_equal(one["a.weight"], synthetic_state_dict(spec, 1)["a.weight"])
    np.testing.assert_array_equal(one["c.weight"], one["a.weight"])
    with pytest.raises(KeyError, match="missing.weight"):
        synthetic_state_dict(spec, 0, {"c.weight": "missing.weight"})


# -- partial loads (strict=False) and short errors --------------------------------------------------
def test_non_strict_load_keeps_what_is_missing_and_reports_it_by_group(small_sd):
    model, sd = small_sd
    init = random_variables(model, seed=7)
    partial = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
    partial["old_head.weight"] = np.zeros((3, 3), np.float32)
    variables, report = from_state_dict(model, partial, strict=False, init=init, source="a partial state_dict")
    assert report.group_names("kept") == ["decoder"] and report.num_kept == 4
    assert report.group_names("loaded") == ["attention", "encoder", "front", "quantizer"]
    assert report.ignored == (("old_head", 1),)
    assert_trees_bitwise_equal(variables["params"]["decoder"], init["params"]["decoder"])
    full = from_state_dict(model, sd)
    assert_trees_bitwise_equal(variables["params"]["encoder"], full["params"]["encoder"])
    text = report.format()
    assert text.splitlines()[0] == "weights for small_aib_qt from a partial state_dict"
    assert "decoder (4 tensors)" in text and "old_head (1 tensor)" in text
    with pytest.raises(ValueError, match="needs init="):
        from_state_dict(model, partial, strict=False)


def test_non_strict_load_still_refuses_a_mis_shaped_tensor(small_sd):
    model, sd = small_sd
    bad = {**sd, "decoder.fc2.weight": np.zeros((7, 64), np.float32)}
    with pytest.raises(StateDictError, match=r"decoder\.fc2\.weight: got \(7, 64\), expected \(10, 64\)"):
        from_state_dict(model, bad, strict=False, init=random_variables(model))


def test_group_names_stop_at_the_coarsest_uniform_module():
    from ib_attention_jax.interop.load_report import IGNORED, KEPT, LOADED, group_by_status

    statuses = {("front", "layer1", "a"): LOADED, ("front", "layer1", "b"): LOADED, ("front", "layer2", "a"): KEPT,
                ("head", "w"): LOADED, ("head", "b"): IGNORED}
    groups = group_by_status(statuses)
    assert groups == {LOADED: [("front/layer1", 2), ("head/w", 1)], KEPT: [("front/layer2", 1)],
                      IGNORED: [("head/b", 1)]}


def test_a_mismatched_state_dict_gets_a_short_error_with_a_prefix_hint():
    model = create_model("wrn_aib_qt", depth=10, widen=2, latent_dim=16)
    sd = to_state_dict(model, random_variables(model, seed=8))
    with pytest.raises(StateDictError) as err:
        from_state_dict(model, {f"backbone.{k}": v for k, v in sd.items()})
    msg = str(err.value)
    n = len(to_state_dict(model, random_variables(model), include_aliases=False, include_counters=False))
    extra = len([k for k in sd if not k.endswith("num_batches_tracked")])  # aliases included: prefixed, unknown
    assert f"({n} missing, {extra} unexpected)" in msg and f"and {n - 5} more ({n} in all)" in msg
    assert "prefix 'backbone.'" in msg and len(msg) < 1500, len(msg)
    small = create_model("small_aib")
    with pytest.raises(StateDictError, match="looks like another model's state_dict.*strict=False") as err:
        from_state_dict(small, sd)
    assert len(str(err.value)) < 1500
