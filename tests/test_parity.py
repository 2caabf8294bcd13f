"""Parity with the official PyTorch models on the seven seed-0 fixtures."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from ib_attention_jax.interop import parity

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official_parity"
NAMES = sorted(p.name.removesuffix("_seed0.json") for p in FIXTURES.glob("*_seed0.json"))  # every fixture there
REPO = pathlib.Path(__file__).parent.parent


# "auto" is Winograd for the wide 3x3 convolutions on CPU and slices for the rest; the
# slices form alone is checked on the two plain CIFAR fixtures.
CASES = [(name, "auto") for name in NAMES] + [("vgg_aib_cifar10", "slices"), ("wrn_aib_cifar10", "slices")]


@pytest.mark.parametrize("name,conv_impl", CASES)
def test_fixture_matches_official_outputs(name, conv_impl):
    report = parity.check_fixture(FIXTURES / f"{name}_seed0.json", conv_impl)
    assert report.passed, report.format()
    compared = {c.key for c in report.comparisons}
    assert {"logits", "kl_official", "total_loss", "att_mu_nhwc", "enc_stats"} <= compared
    if "qt" in name:
        assert {"att_q_index", "vq_loss", "commit_loss", "qt_loss"} <= compared


def test_parity_command_runs_on_a_copied_fixture(tmp_path):
    for suffix in (".json", ".npz"):
        shutil.copy(FIXTURES / f"vgg_aib_qt20_cifar10_seed0{suffix}", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "ib_attention_jax.interop.parity",
                           str(tmp_path / "vgg_aib_qt20_cifar10_seed0.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 24/24" in proc.stdout
    assert "att_q_index" in proc.stdout


def test_parity_command_fails_on_a_wrong_reference(tmp_path):
    import hashlib
    import json

    import numpy as np

    with np.load(FIXTURES / "vgg_aib_cifar10_seed0.npz") as data:
        refs = {k: data[k] for k in data.files}
    refs["logits"] = refs["logits"] * (1 + 1e-3)  # a 1e-3 error is far outside 2e-5
    np.savez(tmp_path / "vgg_aib_cifar10_seed0.npz", **refs)
    manifest = json.loads((FIXTURES / "vgg_aib_cifar10_seed0.json").read_text())
    manifest["npz"]["sha256"] = hashlib.sha256((tmp_path / "vgg_aib_cifar10_seed0.npz").read_bytes()).hexdigest()
    (tmp_path / "vgg_aib_cifar10_seed0.json").write_text(json.dumps(manifest))  # a consistent, wrong fixture
    report = parity.check_fixture(tmp_path / "vgg_aib_cifar10_seed0.json")
    assert [c.key for c in report.comparisons if not c.passed] == ["logits"]
    assert parity.main([str(tmp_path / "vgg_aib_cifar10_seed0.json")]) == 1


def test_compare_tolerates_index_flips_only_at_boundaries():
    import numpy as np

    ref = np.array([[1, 2], [3, 4]])
    ours = np.array([[1, 2], [3, 5]])
    near = {"att_q_boundary_dist_nhwc": np.array([[1.0, 1.0], [1.0, 1e-7]])[..., None]}
    far = {"att_q_boundary_dist_nhwc": np.ones((2, 2, 1))}
    assert parity.compare("att_q_index", ours, ref, near).passed
    assert not parity.compare("att_q_index", ours, ref, far).passed


def test_missing_npz_is_a_clear_error(tmp_path):
    shutil.copy(FIXTURES / "vgg_aib_cifar10_seed0.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="beside its JSON"):
        parity.load_fixture(tmp_path / "vgg_aib_cifar10_seed0.json")
