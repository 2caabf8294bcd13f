"""Training parity: two official training steps and the official schedules, on the seed-0 fixtures.

The train-step fixtures run through the parity command in a subprocess (its float64
check needs ``jax_enable_x64``, which must not reach the other tests); the comparison
rule itself is tested on the fixtures' own records, without running a model.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ib_attention_jax.data import get_recipe
from ib_attention_jax.interop import parity, train_records
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official_train_step"
REPO = pathlib.Path(__file__).parent.parent
NAMES = ["vgg_aib_cifar10", "vgg_aib_qt20_cifar10", "wrn_aib_cifar10", "wrn_aib_qt50_cifar10", "cub_vgg16_aib"]
BN_MODELS = {"vgg_aib_cifar10", "vgg_aib_qt20_cifar10", "wrn_aib_cifar10", "wrn_aib_qt50_cifar10"}


def fixture(name: str) -> pathlib.Path:
    return FIXTURES / f"{name}_seed0.json"


def expected_classes(name: str) -> set[str]:
    kinds = {"loss", "forward", "grad", "param", "param_zero_grad"}
    kinds |= {"buffer", "count"} if name in BN_MODELS else {"ema"}
    kinds |= {"index"} if "qt" in name else set()
    return {f"s{s}_{k}" for s in (0, 1) for k in kinds} | {"lr"}


def run_parity(*args: str, fast_compile: bool = False) -> subprocess.CompletedProcess:
    """The parity command; without ``fast_compile`` as a user runs it, with XLA's default compile flags.

    float32 step-0 gradients of the VGG fixtures hinge on a few ReLU inputs within float32
    rounding of zero, so they depend on how XLA compiles the step: the float32 records are
    checked in the configuration whose figures the README reports. float64 pins every
    value down (to about 1e-11) whatever the compile flags and convolution form: it is
    checked with the tests' fast compile flags.
    """
    dropped = ("JAX_ENABLE_X64",) if fast_compile else ("JAX_ENABLE_X64", "XLA_FLAGS")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "ib_attention_jax.interop.parity", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=900)


def report_classes(stdout: str) -> dict[str, set[str]]:
    """{precision: class names} of the train-step reports in the command's output."""
    classes: dict[str, set[str]] = {}
    current = None
    for line in stdout.splitlines():
        if "training steps at epoch" in line:
            current = classes.setdefault(line.split(" records")[0].rsplit(" ", 1)[-1], set())
        elif current is not None and line.startswith(("  s", "  lr ")):
            current.add(line.split()[0])
    return classes


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_train_steps_match_the_official_records(name, precision):
    proc = run_parity("--precision", precision, str(fixture(name)), fast_compile=precision == "float64")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("PASS:") == 1 and "FAIL" not in proc.stdout, proc.stdout
    assert report_classes(proc.stdout) == {precision: expected_classes(name)}


def test_schedules_match_every_epoch_of_every_official_recipe():
    report = parity.check_schedules(FIXTURES / "official_lr_schedules.json")
    assert report.passed, report.format()
    n = {c.name: c.n for c in report.classes}
    # 200 epochs each; the WRN recipe also compares its anchor group (the VGG-QT one is empty officially)
    assert n == {"vgg_aib_lr0.01": 200, "vgg_aib_qt_lr0.001": 200, "wrn_multistep": 400, "cub_exponential": 200}


def test_epochs_are_counted_as_the_official_loaders_count_them():
    assert get_recipe("cifar10").steps_per_epoch(50_000, 128) == 391  # the last batch of 80 is kept
    assert get_recipe("cifar100").steps_per_epoch(50_000, 128) == 391
    assert get_recipe("cub").steps_per_epoch(5_994, 16) == 374  # drop_last
    assert get_recipe("cluttered_digits").steps_per_epoch(20_000, 64) == 312
    assert get_recipe("cub").steps_per_epoch(10, 16) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        get_recipe("cifar10").steps_per_epoch(50_000, 0)


# -- the comparison rule on the fixture's own records (no model runs) ----------------------------------------------


@pytest.fixture(scope="module")
def vgg_records():
    manifest = json.loads(fixture("vgg_aib_cifar10").read_text())
    with np.load(FIXTURES / manifest["npz"]["file"]) as z:
        refs = {k: z[k] for k in z.files}
    return manifest, refs, state_dict_from_manifest(manifest)


def _classes(ours, refs, manifest, initial, precision="float32"):
    results, _ = train_records.compare_records(ours, refs, manifest, initial, precision)
    return {c.name: c for c in results}


def test_records_equal_to_the_reference_pass_with_zero_error(vgg_records):
    manifest, refs, initial = vgg_records
    classes = _classes(refs, refs, manifest, initial)
    assert classes and all(c.passed and c.max_error == 0 for c in classes.values())


def test_a_biased_running_variance_fails_the_buffer_class(vgg_records):
    """The update Flax's BatchNorm makes: 0.1 * var instead of 0.1 * var * n/(n-1) (n = 16 here)."""
    manifest, refs, initial = vgg_records
    key, name = "step0/after/encode.4.op.5.running_var", "encode.4.op.5.running_var"
    n = 4 * 2 * 2  # batch 4 on the 2x2 map of the encoder's last BatchNorm
    batch_term = (refs[key] - 0.9 * initial[name]) / 0.1  # the unbiased batch variance
    ours = dict(refs)
    ours[key] = (0.9 * initial[name] + 0.1 * batch_term * (n - 1) / n).astype(np.float32)
    classes = _classes(ours, refs, manifest, initial)
    assert not classes["s0_buffer"].passed and classes["s0_buffer"].max_key == key
    assert classes["s0_buffer"].max_error > 10 * classes["s0_buffer"].tol_max


def test_a_counter_off_by_one_and_a_missing_record_fail(vgg_records):
    manifest, refs, initial = vgg_records
    ours = dict(refs)
    ours["step1/after/features.0.op.1.num_batches_tracked"] = np.int64(1)
    del ours["step0/grad_stats/encode.5.weight"]
    classes = _classes(ours, refs, manifest, initial)
    assert not classes["s1_count"].passed and classes["s1_count"].max_error == 1
    assert not classes["s0_grad"].passed and classes["s0_grad"].max_key == "step0/grad_stats/encode.5.weight"


def test_a_record_the_manifest_lists_but_the_npz_lacks_fails(vgg_records):
    manifest, refs, initial = vgg_records
    partial = {k: v for k, v in refs.items() if k not in ("step1/logits", "init_l2/encode.5.weight")}
    classes = _classes(refs, partial, manifest, initial)
    assert not classes["s1_forward"].passed and classes["s1_forward"].max_key == "step1/logits"
    assert not classes["records"].passed and classes["records"].max_key == "init_l2/encode.5.weight"


def test_statistics_records_follow_the_fixture_recipe(vgg_records):
    """The statistics of a known change (every element +1): [numel, sqrt(numel), sum(r)]."""
    manifest, refs, initial = vgg_records
    name = "encode.5.weight"
    out = train_records.compress({name: initial[name].astype(np.float64) + 1.0}, manifest, "step0/", "after", initial)
    r = train_records.probe_vector(manifest["seed"], name, initial[name].size)
    np.testing.assert_allclose(out[f"step0/after_stats/{name}"], [initial[name].size, np.sqrt(initial[name].size),
                                                                  r.sum()], rtol=1e-12)
