"""The layering: evaluation and runtime never import training; one atomic write for local and remote paths;
every mode joins a multi-host run through the one initialiser; export_attention writes under a gs:// workdir."""

import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing
from PIL import Image

from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.runtime import atomic
from ib_attention_jax.runtime.atomic import atomic_write_bytes, atomic_write_text

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ib_attention_jax"


# -- evaluation/ and runtime/ are independent of training/ ------------------------------------------------

def test_evaluation_and_runtime_modules_import_no_training_or_modes_module():
    code = ("import importlib, pkgutil, sys\n"
            "import ib_attention_jax.evaluation as ev, ib_attention_jax.runtime as rt\n"
            "for pkg in (ev, rt):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "print(len([k for k in sys.modules if k.startswith('ib_attention_jax.evaluation.')]))\n"
            "print(sorted(k for k in sys.modules if k.startswith(('ib_attention_jax.training', "
            "'ib_attention_jax.modes'))))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert int(out[0]) >= 8  # every evaluation module was imported
    assert out[1] == "[]", f"evaluation/runtime imported {out[1]}"


def test_the_eval_step_imports_with_the_core_dependencies_only():
    code = ("import sys\nfrom ib_attention_jax import make_eval_step\n"
            "print(make_eval_step.__module__, sorted(m for m in ('PIL', 'matplotlib', 'sklearn', 'orbax', "
            "'tensorflow_datasets', 'grain') if m in sys.modules))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip()
    assert out == "ib_attention_jax.evaluation.step []"


def test_importing_every_module_of_the_package_starts_no_jax_backend():
    """A module-level jnp array would start the backend on import, and then jax.distributed.initialize,
    which every mode calls first on a multi-host run, refuses to run."""
    code = ("import importlib, pkgutil\n"
            "import ib_attention_jax as pkg\n"
            "names = [m.name for m in pkgutil.walk_packages(pkg.__path__, 'ib_attention_jax.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "from jax._src import xla_bridge\n"
            "print(len(names), xla_bridge.backends_are_initialized())\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    count, started = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                                    timeout=300, check=True).stdout.split()
    assert int(count) >= 60 and started == "False"


@pytest.mark.parametrize("layer", ["evaluation", "runtime"])
def test_no_evaluation_or_runtime_source_names_training_or_modes_even_lazily(layer):
    sources = sorted((PACKAGE / layer).glob("*.py"))
    assert sources
    for source in sources:
        text = source.read_text()
        for name in ("ib_attention_jax.training", "ib_attention_jax.modes", "from ib_attention_jax import training"):
            assert name not in text, f"{source.relative_to(REPO)} names {name}"
    if layer == "runtime":
        for source in sources:
            assert "ib_attention_jax.evaluation" not in source.read_text(), source


# -- one atomic write ------------------------------------------------------------------------------------

def test_atomic_write_replaces_whole_files_and_creates_the_folder(tmp_path):
    target = tmp_path / "sub" / "out.json"
    written = atomic_write_text(target, "first")
    assert written == epath.Path(target) and target.read_text() == "first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK  # not mkstemp's 0600


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "best_acc.tar"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["best_acc.tar"]


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """``gs://bucket/...`` served from ``tmp_path/remote/bucket`` through epath (no network); the working folder
    is ``tmp_path/cwd``, where a path mistaken for a local one ("gs:/bucket/...") would appear."""
    remote, cwd = tmp_path / "remote", tmp_path / "cwd"
    remote.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def local(path):
        text = os.fspath(path)
        return str(remote / text.removeprefix("gs://")) if text.startswith("gs://") else text

    def one(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
        return original(local(path), local(dst), *args, **kwargs)

    names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat", "glob", "walk")
    with epath_testing.mock_epath(**dict.fromkeys(names, one), rename=two, replace=two, copy=two):
        yield types.SimpleNamespace(root=remote, cwd=cwd)
    assert list(cwd.iterdir()) == [], "a remote path was written as a local folder"


def test_atomic_write_to_a_remote_path_writes_the_object_in_place(fake_bucket):
    written = atomic_write_text("gs://bucket/run/summary.json", "{}")
    assert os.fspath(written) == "gs://bucket/run/summary.json"
    folder = fake_bucket.root / "bucket" / "run"
    assert [p.name for p in folder.iterdir()] == ["summary.json"] and (folder / "summary.json").read_text() == "{}"


def _examples(b=3, size=16):
    rng = np.random.default_rng(0)
    return {"image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
            "attention": rng.uniform(size=(b, 4, 4)).astype(np.float32),
            "attention_q": np.round(rng.uniform(size=(b, 4, 4)) * 4) / 4,
            "label": np.array([1, 2, 3]), "pred_mc": np.array([1, 0, 3])}


def test_export_attention_under_a_gs_workdir_writes_there_and_no_local_gs_folder(fake_bucket, monkeypatch):
    from ib_attention_jax.modes import export_attention as mode
    from ib_attention_jax.training.workdir import open_run

    config = quickstart("small_aib_qt")
    with open_run(config, "gs://bucket/run", train=True) as run:
        run.record()
    assert (fake_bucket.root / "bucket" / "run" / "config.json").exists()

    class FakeRunner:
        def __init__(self, mode):
            pass

        def compile_eval_step(self, step):
            return step

        def replicate(self, state):
            return state

    exp = types.SimpleNamespace(model=None, step_config=None, eval_key=None, image_size=16,
                                info=types.SimpleNamespace(eval_split="test"))
    monkeypatch.setattr(mode, "restore_latest", lambda run: (exp, {}, 7))
    monkeypatch.setattr(mode, "Runner", FakeRunner)
    monkeypatch.setattr(mode, "eval_batches", lambda config, exp, split: iter(()))
    monkeypatch.setattr(mode, "evaluate", lambda *args, **kwargs: types.SimpleNamespace(examples=_examples()))
    summary = mode.export_attention(config, "gs://bucket/run", num_images=3)

    assert summary == {"step": 7, "directory": "gs://bucket/run/attention_maps", "files": 9,
                       "grid": "gs://bucket/run/attention_maps/grid.png", "correct": 2}
    maps = fake_bucket.root / "bucket" / "run" / "attention_maps"
    names = sorted(p.name for p in maps.iterdir())
    assert len(names) == 10 and "grid.png" in names and "test_0002_att00_q.png" in names
    with Image.open(maps / "test_0000_att00.png") as image:
        assert image.size == (16, 16)


# -- every mode starts multi-host the same way -----------------------------------------------------------

class _Joined(Exception):
    """Raised by the patched jax.distributed.initialize: the mode asked to join before doing anything else."""


@pytest.fixture
def joins(monkeypatch):
    import jax

    calls = []

    def initialize(**kwargs):
        calls.append(kwargs)
        raise _Joined

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return calls


def _distributed_config():
    config = quickstart()
    config.update(distributed=True, coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
    return config


def _entries():
    from ib_attention_jax.modes.evaluate import evaluate_checkpoint
    from ib_attention_jax.modes.export_attention import export_attention
    from ib_attention_jax.modes.export_official import export_official
    from ib_attention_jax.modes.probe import linear_probe
    from ib_attention_jax.modes.report import run_report
    from ib_attention_jax.modes.train import train
    from ib_attention_jax.training.loop import train_and_evaluate

    return {"train": train, "evaluate": evaluate_checkpoint, "export_attention": export_attention,
            "export_official": lambda config, workdir: export_official(config, workdir, "out.tar"),
            "linear_probe": linear_probe, "report": run_report, "train_and_evaluate": train_and_evaluate}


def test_every_mode_joins_the_multi_host_run_first_through_the_dispatch_and_its_own_entry(tmp_path, joins):
    from ib_attention_jax.modes import MODES, run_mode

    workdir = tmp_path / "w"
    for mode in MODES:
        with pytest.raises(_Joined):
            run_mode(mode, _distributed_config(), str(workdir), output="out.tar")
    entries = _entries()
    assert set(MODES) <= set(entries)
    for entry in entries.values():
        with pytest.raises(_Joined):
            entry(_distributed_config(), str(workdir))
    assert len(joins) == len(MODES) + len(entries)
    assert all(c == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1} for c in joins)
    assert not workdir.exists()  # joined before anything was written


def test_a_comparison_joins_before_its_first_run(tmp_path, joins):
    from ib_attention_jax.modes.compare import PRESETS, run_comparison

    with pytest.raises(_Joined):
        run_comparison(PRESETS["smoke"], [0], tmp_path / "cmp", overrides={"distributed": True})
    assert len(joins) == 1 and not (tmp_path / "cmp" / "aib").exists()


def test_a_single_host_config_or_a_joined_process_does_not_join_again(tmp_path, joins, monkeypatch):
    import jax

    from ib_attention_jax.evaluation.report import NothingToReportError
    from ib_attention_jax.modes import run_mode
    from ib_attention_jax.runtime.distributed import initialize_distributed

    with pytest.raises(NothingToReportError):
        run_mode("report", quickstart(), str(tmp_path))
    assert initialize_distributed(quickstart()) is False
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert initialize_distributed(_distributed_config()) is True
    assert joins == []
