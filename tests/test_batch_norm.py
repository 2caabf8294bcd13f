"""BatchNorm against a numpy reference of PyTorch's BatchNorm2d training semantics, on 1 and 8 devices.

PyTorch (train mode): normalise with the batch mean and the BIASED batch variance;
``running_mean = 0.9 running_mean + 0.1 mean``, ``running_var = 0.9 running_var + 0.1 var * n/(n-1)``
(n values per channel in the whole batch), ``num_batches_tracked += 1``, eps 1e-5.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ib_attention_jax.interop.state_dict import from_state_dict, to_state_dict
from ib_attention_jax.models.layers import BatchNorm, batch_moments, batch_norm
from ib_attention_jax.models.registry import create_model, get_spec, list_models
from ib_attention_jax.training import step as step_lib

HELPERS = pathlib.Path(__file__).parent / "helpers"
ROOT = pathlib.Path(__file__).parents[1]
AXES = (0, 1, 2)
EPS, MOMENTUM = 1e-5, 0.1


def torch_train_bn(x, scale, bias, running_mean, running_var, count):
    """(y, running_mean, running_var, count) of one PyTorch train-mode BatchNorm2d call, NHWC, float64."""
    n = x.size // x.shape[-1]
    mean, var = x.mean(AXES), x.var(AXES)  # biased
    y = (x - mean) / np.sqrt(var + EPS) * scale + bias
    return (y, (1 - MOMENTUM) * running_mean + MOMENTUM * mean,
            (1 - MOMENTUM) * running_var + MOMENTUM * var * n / (n - 1), count + 1)


def torch_train_bn_backward(x, scale, dy):
    """(dx, dscale, dbias) of the train-mode BatchNorm for the output cotangent ``dy`` (float64)."""
    mean, var = x.mean(AXES), x.var(AXES)
    xhat = (x - mean) / np.sqrt(var + EPS)
    dx = scale / np.sqrt(var + EPS) * (dy - dy.mean(AXES) - xhat * (dy * xhat).mean(AXES))
    return dx, (dy * xhat).sum(AXES), dy.sum(AXES)


def dense_bn_reference(inputs):
    """Per step (y, grads, stats) of the helper's Dense -> BatchNorm -> mean(sum(y * g)) on the global batch."""
    stats = {"mean": inputs["running_mean"], "var": inputs["running_var"], "num_batches_tracked": 0}
    steps = []
    for x, g in zip(inputs["x"], inputs["g"], strict=True):
        h = x @ inputs["kernel"]
        y, rm, rv, c = torch_train_bn(h, inputs["scale"], inputs["bias"], stats["mean"], stats["var"],
                                      stats["num_batches_tracked"])
        dy = g / (g.size // g.shape[-1])  # d mean_rows(sum_c y*g) / dy
        dh, dscale, dbias = torch_train_bn_backward(h, inputs["scale"], dy)
        grads = {"grad_kernel": x.reshape(-1, x.shape[-1]).T @ dh.reshape(-1, dh.shape[-1]),
                 "grad_scale": dscale, "grad_bias": dbias}
        stats = {"mean": rm, "var": rv, "num_batches_tracked": c}
        steps.append((y, grads, dict(stats)))
    return steps


def normwise(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-300))


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """The helper's runs on 1 and 8 simulated devices, float32 and float64 (one subprocess)."""
    out = tmp_path_factory.mktemp("batch_norm") / "runs.npz"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(HELPERS / "batch_norm_devices.py"), "--num-devices", "8",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("run,tol", [("float32:1", 2e-6), ("float32:8", 2e-6), ("float64:1", 1e-12),
                                     ("float64:8", 1e-12)])
def test_global_batch_statistics_match_pytorch_on_1_and_8_devices(device_runs, run, tol):
    inputs = {k.split("|", 1)[1]: v for k, v in device_runs.items() if k.startswith("input|")}
    for s, (y, grads, stats) in enumerate(dense_bn_reference(inputs)):
        ours = {k.split("|")[2]: v for k, v in device_runs.items() if k.startswith(f"{run}|{s}|")}
        assert normwise(ours["y"], y) <= tol, (s, "y")
        for name, value in grads.items():
            assert normwise(ours[name], value) <= tol, (s, name)
        for name in ("mean", "var"):
            assert ours[name].dtype == np.dtype(run.split(":")[0])
            assert normwise(ours[name], stats[name]) <= tol, (s, name)
        assert ours["num_batches_tracked"].dtype == np.int32
        assert int(ours["num_batches_tracked"]) == stats["num_batches_tracked"] == s + 1


def test_running_variance_is_unbiased_with_the_global_n(device_runs):
    """On 8 devices each holds 4 values per channel, the global batch 32: the factor is 32/31, not 4/3 or 1."""
    inputs = {k.split("|", 1)[1]: v for k, v in device_runs.items() if k.startswith("input|")}
    h = inputs["x"][0] @ inputs["kernel"]
    var = h.var(AXES)
    ours = device_runs["float64:8|0|var"]
    for factor, expected in ((32 / 31, True), (4 / 3, False), (1.0, False)):
        assert np.allclose(ours, 0.9 * inputs["running_var"] + 0.1 * var * factor, rtol=1e-12, atol=0) == expected


# -- in-process, one device ---------------------------------------------------------------------------------------


def _apply(module, x, variables, train=True):
    return module.apply(variables, x, mutable=["batch_stats"] if train else False)


def test_one_device_train_step_matches_pytorch_and_counts():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 2, 2, 6)) * 3.0 + 2.0).astype(np.float32)  # n = 16 as at VGG's last BatchNorm
    module = BatchNorm()
    variables = module.init(jax.random.key(0), x)
    assert set(variables["batch_stats"]) == {"mean", "var", "num_batches_tracked"}
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0  # init does not count
    params = {"scale": (1 + 0.1 * rng.standard_normal(6)).astype(np.float32),
              "bias": (0.1 * rng.standard_normal(6)).astype(np.float32)}
    stats = {"mean": np.full(6, 0.1, np.float32), "var": np.full(6, 1.2, np.float32),
             "num_batches_tracked": np.zeros((), np.int32)}
    y, mutated = jax.jit(lambda v, x: _apply(module, x, v))({"params": params, "batch_stats": stats}, x)
    ref_y, rm, rv, count = torch_train_bn(x.astype(np.float64), params["scale"], params["bias"], stats["mean"],
                                          stats["var"], 0)
    new = mutated["batch_stats"]
    assert normwise(y, ref_y) <= 2e-6
    np.testing.assert_allclose(new["mean"], rm, rtol=2e-6)
    np.testing.assert_allclose(new["var"], rv, rtol=2e-6)
    assert int(new["num_batches_tracked"]) == count == 1
    # the biased update (Flax's) is 0.1 * var / 15 away: far outside float32 rounding
    biased = 0.9 * stats["var"] + 0.1 * x.astype(np.float64).var(AXES)
    assert np.min(np.abs(new["var"] - biased) / rv) > 1e-3


def test_one_device_gradients_match_pytorch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 4, 5)) + 0.5
    g = rng.standard_normal(x.shape)
    scale, bias = 1 + 0.1 * rng.standard_normal(5), 0.1 * rng.standard_normal(5)
    module = BatchNorm()
    stats = {"mean": np.zeros(5, np.float32), "var": np.ones(5, np.float32), "num_batches_tracked": np.int32(0)}

    def loss(params, x):
        y, _ = _apply(module, x, {"params": params, "batch_stats": stats})
        return jnp.sum(y * g.astype(np.float32))

    params = {"scale": scale.astype(np.float32), "bias": bias.astype(np.float32)}
    dparams, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x.astype(np.float32))
    ref_dx, ref_dscale, ref_dbias = torch_train_bn_backward(x, scale, g)
    assert normwise(dx, ref_dx) <= 1e-5
    assert normwise(dparams["scale"], ref_dscale) <= 1e-5
    assert normwise(dparams["bias"], ref_dbias) <= 1e-5


def test_inference_uses_and_keeps_the_running_statistics():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    stats = {"mean": np.full(4, 0.3, np.float32), "var": np.full(4, 2.0, np.float32),
             "num_batches_tracked": np.int32(7)}
    params = {"scale": np.full(4, 1.5, np.float32), "bias": np.full(4, -0.2, np.float32)}
    y = batch_norm(train=False).apply({"params": params, "batch_stats": stats}, x)
    np.testing.assert_allclose(y, (x - 0.3) / np.sqrt(2.0 + EPS) * 1.5 - 0.2, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_statistics():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 4, 4, 3)), jnp.bfloat16)
    module = BatchNorm(dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x)
    y, mutated = _apply(module, x, variables)
    assert y.dtype == jnp.bfloat16
    assert mutated["batch_stats"]["mean"].dtype == mutated["batch_stats"]["var"].dtype == jnp.float32
    assert variables["params"]["scale"].dtype == jnp.float32


def test_one_value_per_channel_is_an_error_as_in_pytorch():
    module = BatchNorm()
    x = jnp.ones((1, 1, 1, 3))
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="more than one value per channel"):
        _apply(module, x, variables)


def test_counter_is_exported_and_imported_with_the_official_name_and_dtype():
    model = create_model("small_aib", conv_impl="xla")
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x, deterministic=True))(jax.random.key(0))

    @jax.jit
    def train_forward(variables):
        _, mutated = model.apply(variables, x, train=True, deterministic=True, mutable=["batch_stats"])
        return {"params": variables["params"], "batch_stats": mutated["batch_stats"]}

    trained = train_forward(train_forward(variables))
    sd = to_state_dict(model, trained)
    counters = {k: v for k, v in sd.items() if k.endswith(".num_batches_tracked")}
    bns = [k for k in sd if k.endswith(".running_mean")]
    assert len(counters) == len(bns) > 0
    assert all(v.dtype == np.int64 and v.shape == () and int(v) == 2 for v in counters.values())
    back = traverse_util.flatten_dict(from_state_dict(model, sd)["batch_stats"])
    counts = [v for k, v in back.items() if k[-1] == "num_batches_tracked"]
    assert len(counts) == len(bns) and all(int(c) == 2 and c.dtype == jnp.int32 for c in counts)


def test_ema_copies_the_counter_and_averages_the_statistics():
    ema = {"params": {"w": jnp.zeros(3)}, "batch_stats": {"mean": jnp.zeros(3), "num_batches_tracked": jnp.int32(4)}}
    new = {"params": {"w": jnp.ones(3)}, "batch_stats": {"mean": jnp.ones(3), "num_batches_tracked": jnp.int32(5)}}
    out = step_lib._update_ema(ema, new, 0.999)
    np.testing.assert_allclose(out["params"]["w"], 0.001, rtol=1e-6)
    np.testing.assert_allclose(out["batch_stats"]["mean"], 0.001, rtol=1e-6)
    assert out["batch_stats"]["num_batches_tracked"].dtype == jnp.int32
    assert int(out["batch_stats"]["num_batches_tracked"]) == 5


def test_every_model_normalises_through_the_project_batch_norm():
    """No model bypasses layers.BatchNorm: every BatchNorm in every registered model keeps a counter
    (Flax's nn.BatchNorm has none)."""
    for name in list_models():
        model = create_model(name)
        size = get_spec(name).image_size
        shapes = jax.eval_shape(lambda m=model, s=size: m.init(jax.random.key(0), jnp.zeros((1, s, s, 3)),
                                                               deterministic=True))
        paths = traverse_util.flatten_dict(dict(shapes.get("batch_stats", {})))
        means = {p[:-1] for p in paths if p[-1] == "mean"}
        counters = {p[:-1] for p in paths if p[-1] == "num_batches_tracked"}
        assert means == counters, name
        assert bool(means) != name.startswith("cub_vgg16"), name  # only the CUB VGG-16 has no BatchNorm


@pytest.mark.parametrize("shape", [(4, 16, 16, 1), (2, 32, 32, 1), (4, 16, 16, 2), (4, 32, 32, 16), (32, 8, 8, 64)])
def test_batch_statistics_are_within_a_few_ulp_of_float64(shape):
    """A statistic's rounding error is the same for every pixel of its channel, so it must be small.

    Single float32 reductions of a few thousand values per channel (the one-channel attention
    BatchNorm's (4, 16, 16, 1)) came out up to 16 ulp off on XLA's CPU backend; PyTorch accumulates
    the statistics in float64 there.
    """
    rng = np.random.default_rng(7)
    x = (2.0 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    mean, var, n = jax.jit(lambda x: batch_moments(x * 1.0 + 0.0, AXES))(x)  # a producer to fuse with
    x64 = x.astype(np.float64)
    mean64 = x64.mean(AXES)
    var64 = np.square(x64 - mean64).mean(AXES)
    assert n == x.size // shape[-1]
    assert mean.dtype == var.dtype == jnp.float32
    mean_ulp = np.abs(np.asarray(mean, np.float64) - mean64) / np.spacing(mean64.astype(np.float32))
    var_ulp = np.abs(np.asarray(var, np.float64) - var64) / np.spacing(var64.astype(np.float32))
    assert mean_ulp.max() <= 1.0, mean_ulp.max()
    assert var_ulp.max() <= 4.0, var_ulp.max()


def test_batch_statistics_gradients_are_those_of_the_plain_formulas():
    """The corrected mean's first estimate carries no gradient: d mean/dx = 1/n, d var/dx = 2 (x - mean)/n."""
    x = jnp.asarray(np.random.default_rng(8).standard_normal((3, 4, 5, 2)), jnp.float32)
    probe = jnp.asarray(np.random.default_rng(9).standard_normal((2, 2)), jnp.float32)

    def ours(x):
        mean, var, _ = batch_moments(x, AXES)
        return jnp.sum(probe[0] * mean + probe[1] * var)

    def plain(x):
        mean = jnp.mean(x, AXES)
        return jnp.sum(probe[0] * mean + probe[1] * jnp.mean(jnp.square(x - mean), AXES))

    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(plain)(x), rtol=1e-5, atol=1e-7)
