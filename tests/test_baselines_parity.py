"""Parity of LTPA and ABN with their public PyTorch code on the two seed-0 baseline fixtures."""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ib_attention_jax.interop import baselines_parity as bp
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.parity import ARRAY_TOL, SCALAR_TOL

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "baselines_parity"
REPO = pathlib.Path(__file__).parent.parent
NAMES = ["ltpa_vgg_cifar100", "abn_wrn_cifar100"]
MUST_COMPARE = {
    "ltpa_vgg_cifar100": {"c1_nhwc", "c2_nhwc", "c3_nhwc", "g_dense", "a1_nhwc", "a2_nhwc", "a3_nhwc", "g1", "g2",
                          "g3", "g_concat", "l1_proj_nhwc_first32ch", "logits", "loss"},
    "abn_wrn_cifar100": {"feat_nhwc", "att_ax_nhwc", "att_logit_nhwc", "att_nhwc", "att_logits", "per_logits",
                         "att_loss", "per_loss", "loss"},
}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_matches_the_public_outputs(name):
    report = bp.check_baseline_fixture(FIXTURES / f"{name}_seed0.json")
    assert report.passed, report.format()
    compared = {c.key for c in report.comparisons}
    with np.load(FIXTURES / f"{name}_seed0.npz") as data:
        assert compared == set(data.files) - {"x_nchw", "y"}  # every stored output
    assert MUST_COMPARE[name] <= compared
    assert {c.tolerance for c in report.comparisons} == {ARRAY_TOL, SCALAR_TOL}


def test_a_wrong_global_feature_is_caught_by_the_scores_only():
    """LTPA's g cancels in the softmax: a port with a wrong g passes the logits and loss, not c1..c3 or g_dense."""
    manifest, refs = bp.load_fixture(FIXTURES / "ltpa_vgg_cifar100_seed0.json")
    variables = bp.fixture_variables(manifest)
    wrong = jax.tree_util.tree_map(lambda v: v, variables)
    wrong["params"]["trunk"]["dense"]["bias"] = variables["params"]["trunk"]["dense"]["bias"] * 0.0
    results = {c.key: c for c in bp.compare_outputs(bp.run_baseline_model(manifest, refs, variables=wrong), refs)}
    assert {k for k, c in results.items() if not c.passed} == {"c1_nhwc", "c2_nhwc", "c3_nhwc", "g_dense"}
    assert min(results[k].normwise for k in ("c1_nhwc", "c2_nhwc", "c3_nhwc")) > 100 * ARRAY_TOL
    assert results["logits"].passed and results["loss"].passed and results["a1_nhwc"].passed


@pytest.mark.parametrize("name", NAMES)
def test_fixture_files_are_intact_and_their_weights_regenerate(name):
    manifest = json.loads((FIXTURES / f"{name}_seed0.json").read_text())
    digest = hashlib.sha256((FIXTURES / manifest["npz"]["file"]).read_bytes()).hexdigest()
    assert digest == manifest["npz"]["sha256"]
    sd = state_dict_from_manifest(manifest)
    assert list(sd) == [key for key, _, _ in manifest["state_dict"]]
    conv = "conv_block1.op.0.weight" if name.startswith("ltpa") else "conv1.weight"
    w = sd[conv].astype(np.float64)
    fan_in = int(np.prod(w.shape[1:]))
    # weight_gain * N(0, 1) / sqrt(fan_in): 1.5 for the deep plain VGG, 1 for the residual WRN
    assert abs(w.std() * np.sqrt(fan_in) / manifest["weight_gain"] - 1) < 0.1
    assert manifest["weight_gain"] == (1.5 if name.startswith("ltpa") else 1.0)


def test_unknown_public_class_is_a_clear_error():
    with pytest.raises(ValueError, match="no registered baseline for class Net"):
        bp.baseline_model_name({"official": {"repo": "someone/else", "file": "net.py", "class_name": "Net"}})


def test_parity_command_runs_a_copied_baseline_fixture(tmp_path):
    for suffix in (".json", ".npz"):
        shutil.copy(FIXTURES / f"abn_wrn_cifar100_seed0{suffix}", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "ib_attention_jax.interop.parity",
                           str(tmp_path / "abn_wrn_cifar100_seed0.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model abn_wrn" in proc.stdout and "PASS: 9/9" in proc.stdout and "att_loss" in proc.stdout
