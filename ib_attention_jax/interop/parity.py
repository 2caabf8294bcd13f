"""Parity with the official PyTorch code: ``python -m ib_attention_jax.interop.parity FIXTURE.json ...``.

A fixture is a JSON manifest and the npz beside it (its sha256 is in the manifest and
checked first; an npz that does not match, cannot be read, lacks an output the
manifest lists or leaves nothing to compare fails). Three kinds, told apart by the
manifest:

* forward fixtures (``official_parity/``): build the registered model, fill it with
  the manifest's synthetic weights, run the zero-noise forward in inference mode,
  compute the official loss, and compare every output the manifest lists: 2e-5
  normwise (max |ours - ref| / max |ref|) for arrays, 1e-5 relative for scalars, anchor
  indices equal except where the stored boundary distance is below 1e-5;
* train-step fixtures (``official_train_step/``): two official training steps, run
  with the official experiment's trainer (:mod:`train_parity`), compared with the
  float32 records and, in a process with ``jax_enable_x64``, the float64 records,
  under the manifest's tolerance classes (:mod:`train_records`);
* the schedules fixture: every epoch's learning rate of every official recipe
  (:mod:`schedule_parity`).

The command prints one report per fixture (and precision) and exits 1 if any fails.
``--precision`` picks the train-step records (default both; the other precision runs
in a child process with ``JAX_ENABLE_X64`` set for it). Forward fixtures use the
backend's convolution (``--conv-impl``, default ``auto``); train-step fixtures a direct
one (default ``slices``), as their tolerances were calibrated with. Fixtures of the attention
baselines' public code (LTPA, ABN) run through ``interop/baselines_parity.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_attention_jax.interop import schedule_parity, train_parity
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.state_dict import from_state_dict
from ib_attention_jax.models.conv import CONV_IMPLS
from ib_attention_jax.models.registry import create_model
from ib_attention_jax.objectives import aib_loss, kl_consistent_rows, kl_official_rows, official_objective

FixtureError = train_parity.FixtureError
PRECISIONS = ("float32", "float64")

ARRAY_TOL = 2e-5  # normwise
SCALAR_TOL = 1e-5  # relative
BOUNDARY_TOL = 1e-5
NOT_COMPARED = ("x_nchw", "y", "att_q_boundary_dist_nhwc")

# (official file suffix, class) -> registered model
OFFICIAL_CLASSES = {
    ("VGG-backbone-32/cifar_va.py", "Vgg16_bn_lrn_VANet"): "vgg_aib",
    ("VGG-backbone-32/cifar_va.py", "Vgg16_bn_lrn_VANet_QT"): "vgg_aib_qt",
    ("WRN-backbone-32/models/cifar/wrn_va.py", "WideResNet"): "wrn_aib",
    ("WRN-backbone-32/models/cifar/wrn_va.py", "WideResNet_QT"): "wrn_aib_qt",
    ("CUB-experiments/model.py", "VaNet_vgg"): "cub_vgg16_aib",
    ("CUB-experiments/model_qt.py", "VaNet_vgg"): "cub_vgg16_aib_qt",
    ("CUB-experiments/model.py", "VaNet_wrn"): "cub_wrn50_2_aib",
    ("CUB-experiments/model_qt.py", "VaNet_wrn"): "cub_wrn50_2_aib_qt",
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    key: str
    max_abs: float
    normwise: float  # or relative error for scalars; mismatching indices for att_q_index
    tolerance: float
    passed: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    fixture: str
    model: str
    comparisons: list[Comparison]

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def format(self) -> str:
        lines = [f"{self.fixture}: model {self.model}",
                 f"  {'output':28s} {'max abs':>11s} {'normwise':>11s} {'tol':>8s}  result"]
        for c in self.comparisons:
            lines.append(f"  {c.key:28s} {c.max_abs:11.3e} {c.normwise:11.3e} {c.tolerance:8.0e}  "
                         f"{'ok' if c.passed else 'FAIL'}{'  ' + c.note if c.note else ''}")
        tail = "" if self.comparisons else " (nothing to compare)"
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}: {sum(c.passed for c in self.comparisons)}"
                     f"/{len(self.comparisons)} outputs within tolerance{tail}")
        return "\n".join(lines)


def model_name_for(manifest: Mapping[str, Any]) -> str:
    """The registered model that reimplements the fixture's official class."""
    official = manifest["official"]
    key = (official.get("file") or official.get("model_file"), official["class_name"])
    if key not in OFFICIAL_CLASSES:
        raise ValueError(f"no registered model for official class {key[1]} in {key[0]}")
    return OFFICIAL_CLASSES[key]


def read_manifest(json_path: str | pathlib.Path) -> dict[str, Any]:
    """A fixture's JSON manifest; an unreadable one is a FixtureError naming the path."""
    json_path = pathlib.Path(json_path)
    try:
        manifest = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FixtureError(f"{json_path}: not a readable fixture manifest ({type(err).__name__}: {err})") from None
    if not isinstance(manifest, dict):
        raise FixtureError(f"{json_path}: a fixture manifest is a JSON object")
    return manifest


def read_npz(json_path: str | pathlib.Path, manifest: Mapping[str, Any], entry: str = "npz") -> dict[str, np.ndarray]:
    """The arrays of the npz the manifest's ``entry`` names (beside the JSON), after checking its sha256."""
    json_path = pathlib.Path(json_path)
    spec = manifest.get(entry)
    if not isinstance(spec, Mapping) or not spec.get("file") or not spec.get("sha256"):
        raise FixtureError(f"{json_path}: the manifest names no {entry} file with its sha256, so its reference "
                           "arrays cannot be checked")
    npz_path = json_path.parent / spec["file"]
    if not npz_path.exists():
        raise FileNotFoundError(f"{npz_path} not found: keep the fixture's npz beside its JSON")
    digest = hashlib.sha256(npz_path.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        raise FixtureError(f"{npz_path}: sha256 {digest} does not match the manifest's {spec['sha256']}: this is "
                           "not the npz the manifest describes; copy the fixture's JSON and npz together")
    try:
        with np.load(npz_path) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise FixtureError(f"{npz_path}: not a readable npz ({type(err).__name__}: {err}); copy the fixture "
                           "again") from None


def load_fixture(json_path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the reference arrays (the npz named in the manifest, beside the JSON, sha256 checked)."""
    manifest = read_manifest(json_path)
    return manifest, read_npz(json_path, manifest)


def absent_outputs(manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray]) -> list[Comparison]:
    """A failing comparison for every output the manifest lists that its npz lacks."""
    return [Comparison(key, float("nan"), float("nan"), 0.0, False, "listed in the manifest, absent from the npz")
            for key in manifest.get("outputs", {}) if key not in NOT_COMPARED and key not in refs]


def run_fixture_model(manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray],
                      conv_impl: str = "auto") -> dict[str, np.ndarray]:
    """Our outputs, under the fixture's output names, for the zero-noise inference forward."""
    name = model_name_for(manifest)
    args = manifest.get("constructor_args", {})
    kwargs: dict[str, Any] = {"latent_dim": int(manifest["latent_dim_K"]), "conv_impl": conv_impl}
    if args.get("qt_num"):
        kwargs["num_anchors"] = int(args["qt_num"])
    model = create_model(name, int(manifest["num_classes"]), **kwargs)
    variables = from_state_dict(model, state_dict_from_manifest(manifest))
    x = jnp.asarray(refs["x_nchw"]).transpose(0, 2, 3, 1)
    labels = jnp.asarray(refs["y"]).astype(jnp.int32)

    @jax.jit
    def forward(variables, x, labels):
        out = model.apply(variables, x, train=False, num_samples=1, deterministic=True)
        _, parts = aib_loss(out, labels, official_objective(name))
        return out, parts

    out, parts = forward(variables, x, labels)
    ours = {
        "feat_nhwc": out.features, "att_mu_logit_nhwc": out.attention.logit, "att_mu_nhwc": out.attention.mean,
        "att_std_pre_nhwc": out.attention.std_pre, "att_std_nhwc": out.attention.std,
        "att_sample_nhwc": out.attention.samples[0], "att_used_nhwc": out.attention_used[0],
        "enc_stats": out.stats, "mu_z": out.latent.mean, "std_z": out.latent.std, "logits": out.logits,
        "kl_official": parts["kl"], "kl_official_rows": kl_official_rows(out.latent.mean, out.latent.std),
        "kl_std_as_scale_rows_f64": kl_consistent_rows(out.latent.mean, out.latent.std),
        "class_loss": parts["class_loss"], "info_loss": parts["info_loss"], "total_loss": parts["total"],
    }
    ours["kl_std_as_scale_f64"] = jnp.mean(ours["kl_std_as_scale_rows_f64"])
    ours["feat_nhwc_first128ch"] = out.features[..., :128]
    if out.quantizer is not None:
        ours.update({"anchors": variables["params"]["quantizer"]["anchors"],
                     "att_q_index": out.quantizer.index[0, ..., 0], "att_q_nhwc": out.quantizer.quantized[0],
                     "vq_loss": parts["vq_loss"], "commit_loss": parts["commit_loss"], "qt_loss": parts["qt_loss"]})
    return {k: np.asarray(v) for k, v in ours.items()}


def compare(key: str, ours: np.ndarray, ref: np.ndarray, refs: Mapping[str, np.ndarray]) -> Comparison:
    """One output against its reference under the fixture protocol's tolerance."""
    if ours.shape != ref.shape:
        return Comparison(key, float("inf"), float("inf"), 0.0, False, f"shape {ours.shape} != {ref.shape}")
    if key == "att_q_index":
        differ = ours != ref
        dist = refs["att_q_boundary_dist_nhwc"][..., 0]
        bad = int(np.sum(differ & (dist >= BOUNDARY_TOL)))
        note = f"{int(differ.sum())} differ, {bad} away from a boundary"
        return Comparison(key, float(differ.sum()), float(bad), 0.0, bad == 0, note)
    ours64, ref64 = ours.astype(np.float64), ref.astype(np.float64)
    max_abs = float(np.max(np.abs(ours64 - ref64))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
    tol = SCALAR_TOL if ref.ndim == 0 else ARRAY_TOL
    err = max_abs / scale if scale > 0 else max_abs
    return Comparison(key, max_abs, err, tol, err <= tol)


def check_fixture(json_path: str | pathlib.Path, conv_impl: str = "auto") -> ParityReport:
    """Runs one forward fixture and compares every output the manifest lists and the npz stores."""
    manifest, refs = load_fixture(json_path)
    from ib_attention_jax.interop import baselines_parity  # it imports this module

    if baselines_parity.is_baseline_fixture(manifest):  # LTPA and ABN, from their public code
        return baselines_parity.baseline_report(str(json_path), manifest, refs, conv_impl)
    comparisons = absent_outputs(manifest, refs)
    if all(key in NOT_COMPARED for key in refs):  # no reference output: nothing to run the model for
        return ParityReport(str(json_path), model_name_for(manifest), comparisons)
    ours = run_fixture_model(manifest, refs, conv_impl)
    for key in refs:
        if key in NOT_COMPARED:
            continue
        if key not in ours:
            comparisons.append(Comparison(key, float("nan"), float("nan"), 0.0, False, "not produced"))
            continue
        comparisons.append(compare(key, ours[key], refs[key], refs))
    return ParityReport(str(json_path), model_name_for(manifest), comparisons)


def fixture_kind(manifest: Mapping[str, Any]) -> str:
    """``"schedules"``, ``"train_step"`` or ``"forward"``."""
    if schedule_parity.is_schedules_manifest(manifest):
        return "schedules"
    if "state_entries" in manifest and "optimizer" in manifest:
        return "train_step"
    return "forward"


def check_train_step(json_path: str | pathlib.Path, precision: str = "float32",
                     conv_impl: str = train_parity.DEFAULT_CONV_IMPL) -> train_parity.ClassReport:
    """Runs one train-step fixture against its ``precision`` records."""
    manifest = read_manifest(json_path)
    refs = read_npz(json_path, manifest, "npz" if precision == "float32" else "npz_float64")
    return train_parity.check_train_fixture(manifest, refs, str(json_path), model_name_for(manifest), precision,
                                            conv_impl)


def check_schedules(json_path: str | pathlib.Path) -> train_parity.ClassReport:
    """Runs the schedules fixture."""
    manifest, refs = load_fixture(json_path)
    return schedule_parity.check_schedules(manifest, refs, str(json_path))


def check(json_path: str | pathlib.Path, precision: str = "float32", conv_impl: str | None = None):
    """The report of one fixture (a forward or schedules fixture ignores ``precision``)."""
    kind = fixture_kind(read_manifest(json_path))
    if kind == "schedules":
        return check_schedules(json_path)
    if kind == "train_step":
        return check_train_step(json_path, precision, conv_impl or train_parity.DEFAULT_CONV_IMPL)
    return check_fixture(json_path, conv_impl or "auto")


def _jobs(paths: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """(fixture, precision) pairs: train-step fixtures at each precision, the others once in float32."""
    jobs = []
    for path in paths:
        try:
            kind = fixture_kind(read_manifest(path))
        except FixtureError:
            kind = "forward"  # reported when it runs
        jobs += [(path, p) for p in precisions] if kind == "train_step" else [(path, "float32")]
    return jobs


def _run_child(paths: list[str], precision: str, conv_impl: str | None) -> int:
    """Runs ``paths`` at ``precision`` in a fresh interpreter whose jax_enable_x64 matches it."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = dict(os.environ, JAX_ENABLE_X64="1" if precision == "float64" else "0",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    cmd = [sys.executable, "-m", "ib_attention_jax.interop.parity", "--precision", precision, *paths]
    if conv_impl:
        cmd += ["--conv-impl", conv_impl]
    sys.stdout.flush()
    return subprocess.run(cmd, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="+", help="fixture JSON files (the npz beside each)")
    parser.add_argument("--conv-impl", default=None, choices=CONV_IMPLS,
                        help="convolution form (default: auto for forward fixtures, slices for train-step fixtures)")
    parser.add_argument("--precision", default="both", choices=(*PRECISIONS, "both"),
                        help="train-step records to compare (float64 runs with jax_enable_x64)")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")  # GPU/TPU: no TF32/bf16 matmuls
    here = "float64" if jax.config.jax_enable_x64 else "float32"
    jobs = _jobs(args.fixtures, list(PRECISIONS) if args.precision == "both" else [args.precision])
    ok = True
    for path, precision in jobs:
        if precision != here:
            continue
        try:
            report = check(path, precision, args.conv_impl)
        except (FixtureError, FileNotFoundError) as err:
            print(f"{path}: cannot be checked: {err}\n  FAIL")
            ok = False
            continue
        print(report.format())
        ok &= report.passed
    elsewhere = [path for path, precision in jobs if precision != here]
    if elsewhere:
        ok &= _run_child(elsewhere, "float64" if here == "float32" else "float32", args.conv_impl) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
