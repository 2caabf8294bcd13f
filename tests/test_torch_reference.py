"""The PyTorch reference models (``experiments.support.torch_models``) against the official outputs and Flax.

These need the optional torch extra (``make torch``) and are skipped without it. Their
CPU/numpy twin is ``tests/test_parity.py``: that one runs the Flax models on the same
fixtures, this one runs the torch modules the benchmark trains, so both sides of
``experiments/benchmarks/train_step.py`` are tied to the official numbers. The
Flax -> torch tests load a Flax model's exported state_dict with ``strict=True`` and
compare the zero-noise eval outputs: the weights convert both ways.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the optional torch extra: make torch")

from experiments.support import torch_models as tr  # noqa: E402
from ib_attention_jax import create_model  # noqa: E402
from ib_attention_jax.interop import parity, state_dict_from_manifest, to_state_dict  # noqa: E402
from ib_attention_jax.objectives import aib_loss, official_objective  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official_parity"
CIFAR_FIXTURES = ["vgg_aib_cifar10", "vgg_aib_qt20_cifar10", "wrn_aib_cifar10", "wrn_aib_qt50_cifar10"]


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _tensors(state_dict: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def _assert_all_pass(comparisons: list[parity.Comparison]) -> None:
    failed = [c for c in comparisons if not c.passed]
    assert not failed, "\n".join(f"{c.key}: {c.normwise:.3e} > {c.tolerance:.0e} {c.note}" for c in failed)


@pytest.mark.parametrize("name", CIFAR_FIXTURES)
def test_reference_module_matches_official_outputs(name):
    manifest, refs = parity.load_fixture(FIXTURES / f"{name}_seed0.json")
    model = tr.model_from_manifest(manifest)
    # the same keys in the same order as the official module's state_dict, aliases included
    assert list(model.state_dict()) == [entry[0] for entry in manifest["state_dict"]]
    model.load_state_dict(_tensors(state_dict_from_manifest(manifest)), strict=True)
    model.eval()
    x, y = torch.from_numpy(refs["x_nchw"]), torch.from_numpy(refs["y"])
    with torch.no_grad():
        parts = model(x, num_sample=1, noise=False, return_parts=True)
        output = model(x, num_sample=1, noise=False)
        total, loss_parts = tr.loss(model, output, y)
    ours = {
        "feat_nhwc": _nhwc(parts["features"]), "att_mu_logit_nhwc": _nhwc(parts["att_mu_logit"]),
        "att_mu_nhwc": _nhwc(parts["att_mu"]), "att_std_pre_nhwc": _nhwc(parts["att_std_pre"]),
        "att_std_nhwc": _nhwc(parts["att_std"]), "att_sample_nhwc": _nhwc(parts["att_sample"]),
        "att_used_nhwc": _nhwc(parts["att_used"]), "enc_stats": parts["enc_stats"].numpy(),
        "mu_z": parts["mu_z"].numpy(), "std_z": parts["std_z"].numpy(), "logits": output[0].numpy(),
        "kl_official": output[1].numpy(), "kl_official_rows": parts["kl_rows"].numpy(),
        "class_loss": loss_parts["class_loss"].numpy(), "info_loss": loss_parts["info_loss"].numpy(),
        "total_loss": total.numpy(),
    }
    if "qt" in name:
        assert len(output) == 4
        ours.update({"vq_loss": output[2].numpy(), "commit_loss": output[3].numpy(),
                     "qt_loss": loss_parts["qt_loss"].numpy(), "anchors": parts["anchors"].numpy(),
                     "att_q_index": parts["att_q_index"].numpy(), "att_q_nhwc": _nhwc(parts["att_used"])})
    else:
        assert len(output) == 2
    np.testing.assert_array_equal(parts["logits"].numpy(), output[0].numpy())
    assert set(ours) <= set(refs)
    _assert_all_pass([parity.compare(k, v, refs[k], refs) for k, v in ours.items()])


def _random_variables(model, gain: float, seed: int = 0) -> dict:
    """Random Flax variables from the shape tree (no ``model.init`` compile): the fixtures' recipe.

    Kernels ``gain * N(0, 1) / sqrt(fan_in)``, biases ``0.1 N``, BN scale ``1 + 0.1 N``, running
    mean ``0.1 N`` and var ``1 + 0.5 U`` (so eval-mode BN is exercised), anchors ``linspace + 0.01 N``.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True),
                            jax.random.key(0))

    def draw(path, s):
        leaf, shape = path[-1].key, s.shape
        if leaf == "kernel":
            value = gain * rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif leaf in ("scale", "var"):
            value = 1.0 + (0.5 * rng.uniform(size=shape) if leaf == "var" else 0.1 * rng.standard_normal(shape))
        elif leaf == "anchors":
            value = np.linspace(0.0, 1.0, shape[-1]) + 0.01 * rng.standard_normal(shape)
        else:  # bias, mean
            value = 0.1 * rng.standard_normal(shape)
        return np.asarray(value, np.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.mark.parametrize("name, gain", [("vgg_aib_qt", 2 ** 0.5), ("wrn_aib", 1.0)], ids=["vgg_aib_qt", "wrn_aib"])
def test_flax_export_loads_strictly_and_gives_the_same_outputs(name, gain):
    model = create_model(name, 10)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    labels = np.arange(2) % 10
    variables = _random_variables(model, gain)

    @jax.jit
    def forward(variables, x, labels):
        out = model.apply(variables, x, train=False, num_samples=1, deterministic=True)
        return out.logits, aib_loss(out, labels, official_objective(name))

    logits, (total, parts) = forward(variables, jnp.asarray(x), jnp.asarray(labels))
    reference = tr.create_torch_model(name, 10)
    reference.load_state_dict(_tensors(to_state_dict(model, variables)), strict=True)
    reference.eval()
    with torch.no_grad():
        output = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), num_sample=1, noise=False)
        torch_total, _ = tr.loss(reference, output, torch.from_numpy(labels))
    refs = {"logits": np.asarray(logits), "kl": np.asarray(parts["kl"]), "total": np.asarray(total)}
    assert np.ptp(refs["logits"]) > 1e-2 and np.isfinite(refs["total"])  # a non-degenerate comparison
    ours = {"logits": output[0].numpy(), "kl": output[1].numpy(), "total": torch_total.numpy()}
    _assert_all_pass([parity.compare(k, ours[k], refs[k], refs) for k in refs])


@pytest.mark.parametrize("name", sorted(tr.MODELS))
def test_state_dict_keys_and_shapes_equal_the_flax_export(name):
    model = create_model(name, 10)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True),
                            jax.random.key(0))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    exported = to_state_dict(model, zeros)
    reference = tr.create_torch_model(name, 10).state_dict()
    assert set(reference) == set(exported)
    assert {k: tuple(v.shape) for k, v in reference.items()} == {k: v.shape for k, v in exported.items()}


def test_zero_noise_samples_are_identical_and_sample_major():
    torch.manual_seed(0)
    model = tr.create_torch_model("vgg_aib_qt", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        one = model(x, num_sample=1, noise=False, return_parts=True)
        three = model(x, num_sample=3, noise=False, return_parts=True)
        noisy = model(x, num_sample=3, noise=True, return_parts=True)
    torch.testing.assert_close(three["logits"], one["logits"], rtol=1e-5, atol=1e-6)
    assert three["enc_stats"].shape == (9, 512) and three["att_used"].shape == (9, 1, 16, 16)
    torch.testing.assert_close(three["enc_stats"][3:6], one["enc_stats"], rtol=1e-5, atol=1e-6)  # row s*b + i
    assert not torch.equal(noisy["att_sample"][:3], noisy["att_sample"][3:6])  # independent samples


@pytest.mark.parametrize("name", ["vgg_aib_qt", "vgg_plain"])
def test_one_official_sgd_step_trains(name):
    torch.manual_seed(0)
    model = tr.create_torch_model(name, 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    total, parts = tr.loss(model, model(x, num_sample=1), y)
    total.backward()
    opt.step()
    assert torch.isfinite(total)
    assert ("info_loss" in parts) == (name != "vgg_plain")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "features.0.op.0.weight" in changed and "features.0.op.1.running_mean" in changed
    if name == "vgg_aib_qt":
        assert model.emb.weight.grad is not None  # the codebook term reaches the anchors
