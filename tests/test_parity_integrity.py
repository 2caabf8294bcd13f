"""The parity command checks what it claims: the npz it compares with is the manifest's, whole and not empty.

Each case runs the command as a user would (a subprocess); none of them gets as far as
building a model, so they are quick.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ib_attention_jax.interop import parity

REPO = pathlib.Path(__file__).parent.parent
FORWARD = REPO / "tests" / "fixtures" / "official_parity" / "vgg_aib_cifar10_seed0.json"
TRAIN = REPO / "tests" / "fixtures" / "official_train_step" / "vgg_aib_cifar10_seed0.json"


def run_parity(*paths: pathlib.Path, precision: str = "float32") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_ENABLE_X64="0")
    return subprocess.run([sys.executable, "-m", "ib_attention_jax.interop.parity", "--precision", precision,
                           *map(str, paths)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def copy_fixture(json_path: pathlib.Path, folder: pathlib.Path, entries=("npz",)) -> pathlib.Path:
    manifest = json.loads(json_path.read_text())
    for entry in entries:
        shutil.copy(json_path.parent / manifest[entry]["file"], folder)
    shutil.copy(json_path, folder)
    return folder / json_path.name


def rewrite_npz(json_path: pathlib.Path, arrays: dict, entry: str = "npz", outputs: dict | None = None) -> None:
    """Replaces the fixture's npz with ``arrays`` and puts its sha256 in the manifest (a consistent fixture)."""
    manifest = json.loads(json_path.read_text())
    npz = json_path.parent / manifest[entry]["file"]
    np.savez(npz, **arrays)
    manifest[entry]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    if outputs is not None:
        manifest["outputs"] = outputs
    json_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("source", [FORWARD, TRAIN], ids=["forward", "train_step"])
def test_a_manifest_whose_sha256_does_not_match_its_npz_fails(tmp_path, source):
    path = copy_fixture(source, tmp_path)
    manifest = json.loads(path.read_text())
    manifest["npz"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    proc = run_parity(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{tmp_path / manifest['npz']['file']}: sha256 " in proc.stdout
    assert "does not match the manifest's 0000" in proc.stdout


def test_an_npz_with_no_reference_outputs_fails(tmp_path):
    path = copy_fixture(FORWARD, tmp_path)
    with np.load(FORWARD.parent / "vgg_aib_cifar10_seed0.npz") as z:
        inputs = {k: z[k] for k in ("x_nchw", "y")}
    rewrite_npz(path, inputs)  # consistent sha256, but only the inputs
    proc = run_parity(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "listed in the manifest, absent from the npz" in proc.stdout
    rewrite_npz(path, inputs, outputs={})  # and a manifest that lists nothing either
    proc = run_parity(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: 0/0 outputs within tolerance (nothing to compare)" in proc.stdout


def test_an_output_the_manifest_lists_must_be_in_the_npz(tmp_path):
    path = copy_fixture(FORWARD, tmp_path)
    with np.load(FORWARD.parent / "vgg_aib_cifar10_seed0.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "logits"}
    rewrite_npz(path, arrays)
    manifest, refs = parity.load_fixture(path)
    absent = parity.absent_outputs(manifest, refs)
    assert [c.key for c in absent] == ["logits"] and not any(c.passed for c in absent)


def test_a_truncated_npz_is_an_error_naming_its_path(tmp_path):
    path = copy_fixture(TRAIN, tmp_path)
    manifest = json.loads(path.read_text())
    npz = tmp_path / manifest["npz"]["file"]
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    manifest["npz"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()  # only the zip itself is broken
    path.write_text(json.dumps(manifest))
    with pytest.raises(parity.FixtureError, match=f"{npz}: not a readable npz"):
        parity.check_train_step(path, "float32")
    proc = run_parity(path)
    assert proc.returncode == 1 and f"{npz}: not a readable npz" in proc.stdout, proc.stdout + proc.stderr


def test_a_train_step_npz_without_records_fails(tmp_path):
    path = copy_fixture(TRAIN, tmp_path)
    rewrite_npz(path, {"step0/y": np.arange(4)})
    proc = run_parity(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the npz holds no records" in proc.stdout and "FAIL: 0/" in proc.stdout
    assert "s0_loss" in proc.stdout and "s1_param" in proc.stdout
