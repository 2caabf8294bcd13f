"""Parity with the official PyTorch models: ``python -m ib_attention_jax.interop.parity FIXTURE.json``.

A fixture is a JSON manifest (official class, constructor, state_dict spec, seed) and
an npz of the official model's outputs beside it. This builds the registered model,
fills it with the manifest's synthetic weights, runs the zero-noise forward in
inference mode, computes the official loss, prints the max abs and normwise error
(max |ours - ref| / max |ref|) of every stored output and exits 1 if any is outside
the tolerance: 2e-5 normwise for arrays, 1e-5 relative for scalars, anchor indices
equal except where the stored boundary distance is below 1e-5. Fixtures of the attention
baselines' public code (LTPA, ABN) run through ``interop/baselines_parity.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_attention_jax.interop.state_dict import from_state_dict
from ib_attention_jax.interop.synthetic import state_dict_from_manifest
from ib_attention_jax.models.conv import CONV_IMPLS
from ib_attention_jax.models.registry import create_model
from ib_attention_jax.objectives import aib_loss, kl_consistent_rows, kl_official_rows, official_objective

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
        return all(c.passed for c in self.comparisons)

    def format(self) -> str:
        lines = [f"{self.fixture}: model {self.model}",
                 f"  {'output':28s} {'max abs':>11s} {'normwise':>11s} {'tol':>8s}  result"]
        for c in self.comparisons:
            lines.append(f"  {c.key:28s} {c.max_abs:11.3e} {c.normwise:11.3e} {c.tolerance:8.0e}  "
                         f"{'ok' if c.passed else 'FAIL'}{'  ' + c.note if c.note else ''}")
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}: {sum(c.passed for c in self.comparisons)}"
                     f"/{len(self.comparisons)} outputs within tolerance")
        return "\n".join(lines)


def model_name_for(manifest: Mapping[str, Any]) -> str:
    """The registered model that reimplements the fixture's official class."""
    official = manifest["official"]
    key = (official["file"], official["class_name"])
    if key not in OFFICIAL_CLASSES:
        raise ValueError(f"no registered model for official class {key[1]} in {key[0]}")
    return OFFICIAL_CLASSES[key]


def load_fixture(json_path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the reference arrays (the npz named in the manifest, beside the JSON)."""
    json_path = pathlib.Path(json_path)
    manifest = json.loads(json_path.read_text())
    npz_path = json_path.parent / manifest["npz"]["file"]
    if not npz_path.exists():
        raise FileNotFoundError(f"{npz_path} not found: keep the fixture's npz beside its JSON")
    with np.load(npz_path) as data:
        refs = {k: data[k] for k in data.files}
    return manifest, refs


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
    """Runs one fixture and compares every stored output."""
    manifest, refs = load_fixture(json_path)
    from ib_attention_jax.interop import baselines_parity  # it imports this module

    if baselines_parity.is_baseline_fixture(manifest):  # LTPA and ABN, from their public code
        return baselines_parity.baseline_report(str(json_path), manifest, refs, conv_impl)
    ours = run_fixture_model(manifest, refs, conv_impl)
    comparisons = []
    for key in refs:
        if key in NOT_COMPARED:
            continue
        if key not in ours:
            comparisons.append(Comparison(key, float("nan"), float("nan"), 0.0, False, "not produced"))
            continue
        comparisons.append(compare(key, ours[key], refs[key], refs))
    return ParityReport(str(json_path), model_name_for(manifest), comparisons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="+", help="fixture JSON files (the npz beside each)")
    parser.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS)
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")  # GPU/TPU: no TF32/bf16 matmuls
    ok = True
    for path in args.fixtures:
        report = check_fixture(path, args.conv_impl)
        print(report.format())
        ok &= report.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
