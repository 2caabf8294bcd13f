"""The package as a user installs it: a wheel in a fresh venv, the CLI and the example from another folder.

How, offline and fast enough for CI: the project's files (pyproject.toml, README.md and the
``ib_attention_jax`` package; no tests, no experiments) are copied to a temporary folder and built
there into a wheel with ``pip wheel --no-deps --no-build-isolation --no-index`` (the setuptools of
this environment, nothing downloaded). A fresh venv (``python -m venv --without-pip``) gets the wheel
with ``pip --python FRESH install --no-deps --no-index WHEEL``; only then a ``.pth`` file in its
site-packages adds this environment's site-packages after its own, so jax, flax, tfds, ... are the
ones already installed here instead of a download of several GB. The package itself comes from the
wheel only: the checks below import it from the fresh venv, with the working directory outside the
repository and no PYTHONPATH.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).parent.parent
SMALL = ["--config.num_steps=2", "--config.train_split=train[:256]", "--config.eval_split=test[:64]",
         "--config.batch_size=16", "--config.eval_batch_size=32", "--config.eval_num_samples=2",
         "--config.progress=False", "--config.export_examples=4", "--config.attention_metrics_examples=0",
         "--config.model_kwargs.conv_impl=xla"]
HEAVY = ("tensorflow_datasets", "grain", "orbax", "ml_collections", "sklearn", "PIL", "matplotlib", "tqdm", "torch",
         "tensorboardX", "tensorflow", "array_record")


def _run(cmd, cwd, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ib_attention_jax", src / "ib_attention_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _check(_run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", dist, src], cwd=src))
    (path,) = dist.glob("ib_attention_jax-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> pathlib.Path:
    """The fresh venv's python, with the wheel installed and this environment's dependencies visible."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent))
    python = venv / "bin" / "python"
    _check(_run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
                 wheel], cwd=venv.parent))
    site = pathlib.Path(_check(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    cwd=venv.parent)).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dependencies_of_the_test_environment.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return python


def test_the_wheel_holds_the_package_its_dependencies_and_the_cli(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "ib_attention_jax/models/head.py" in names and "ib_attention_jax/cli.py" in names
    assert not any(n.startswith(("tests/", "experiments/", "docs/")) for n in names)
    assert "ib-attention = ib_attention_jax.cli:main" in entry_points
    requires = [Requirement(line.split(": ", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    core = {r.name: r.specifier for r in requires if r.marker is None}
    assert sorted(core) == ["chex", "flax", "jax", "numpy", "optax"]
    for name, spec in core.items():  # the tested versions are admitted, and so is the next minor jax
        assert spec.contains(metadata.version(name)), (name, spec)
    assert all(core["jax"].contains(v) for v in ("0.10.2", "0.11.0", "0.12.0")) and not core["jax"].contains("1.0")
    extras = {}
    for r in requires:
        if r.marker is not None:
            (extra,) = [e for e in ("train", "torch", "tensorflow", "dev") if r.marker.evaluate({"extra": e})]
            extras.setdefault(extra, {})[r.name] = r.specifier
    train = {n.lower().replace("_", "-") for n in extras["train"]}
    assert {"orbax-checkpoint", "tensorflow-datasets", "grain", "array-record", "ml-collections", "absl-py", "pillow",
            "scikit-learn", "tqdm", "matplotlib", "tensorboardx"} <= train
    assert set(extras["tensorflow"]) == {"tensorflow-cpu"} and {"pytest", "pytest-xdist", "ruff"} <= set(extras["dev"])
    torch_spec = extras["torch"]["torch"]
    assert torch_spec.contains("2.13.0") and torch_spec.contains("2.14.0") and "==" not in str(torch_spec)  # a range


def test_the_installed_core_imports_from_the_wheel_without_the_training_extras(fresh, tmp_path):
    code = ("import sys, ib_attention_jax as ib\n"
            "from ib_attention_jax import AIBHead, ObjectiveConfig, aib_loss, compute_loss, create_model, "
            "make_train_step\n"
            "import ib_attention_jax.models, ib_attention_jax.objectives, ib_attention_jax.training.step\n"
            f"print(ib.__file__); print([m for m in {HEAVY!r} if m in sys.modules]); print(len(ib.list_models()))\n")
    out = _check(_run([fresh, "-c", code], cwd=tmp_path)).stdout.splitlines()
    assert out[0].startswith(str(fresh.parent.parent)), out  # the wheel's copy, not the repository
    assert out[1] == "[]", f"the core imported training extras: {out[1]}"
    assert int(out[2]) >= 10


def test_the_cli_trains_a_copied_quickstart_config_from_another_folder(fresh, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = shutil.copy(REPO / "experiments" / "configs" / "quickstart.py", elsewhere / "my_quickstart.py")
    cli = fresh.parent / "ib-attention"
    assert cli.exists()
    proc = _check(_run([cli, f"--config={config}", "--workdir=W", f"--config.data_dir={elsewhere / 'tfds'}", *SMALL],
                       cwd=elsewhere, timeout=400))
    summary = json.loads((elsewhere / "W" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_eval_examples"] == 64 and summary["model"] == "small_aib"
    assert (elsewhere / "W" / "attention_overlays.png").exists()
    assert (elsewhere / "tfds" / "cluttered_digits").is_dir()  # the embedded dataset, built there by the run
    assert "building cluttered_digits" in proc.stdout


def test_the_own_backbone_example_runs_from_another_folder(fresh, tmp_path):
    example = shutil.copy(REPO / "docs" / "examples" / "own_backbone.py", tmp_path / "own_backbone.py")
    out = _check(_run([fresh, example], cwd=tmp_path, timeout=300)).stdout
    assert "the loss went down" in out and "held-out loss" in out, out
