"""The records of a train-step fixture: what is stored per step, how it is compressed, how it is compared.

A train-step fixture stores, per step ``s`` (prefix ``step<s>/``), the loss parts, the
logits and attention maps, every gradient and every state_dict tensor after the step
(parameters, BatchNorm buffers, CUB's EMA copy). Tensors of at most
``records.full_max`` elements are stored in full; larger ones as float64 statistics
``[sum, l2 norm, dot with a fixed random vector r]`` (of the gradient; of the CHANGE
``after - initial`` for states), r drawn from ``default_rng([seed, crc32(name), 99])``,
tensors flattened in the official PyTorch layout.

Each key gets an error and a tolerance class ``s<step>_<kind>``; a class passes when
its largest error is within the manifest's ``max`` and the median of its errors within
``median`` (``None``: not checked at that precision). The errors:

* losses: relative; logits, attention maps and full gradients: max|d| / max|ref|;
  gradient statistics: max_i |d_i| / ||g_ref||;
* full states: the excess of max|d| over ``atol_eps`` ulps of max|ref|, relative to
  the largest change max|ref - initial|; state statistics: the excess of each |d_i|
  over ``atol_eps`` ulps of ||initial||_1 (sum) or ||initial||_2 (norm, dot), relative
  to ||ref - initial||;
* ``num_batches_tracked``: the number of differing values (exact);
* anchor indices: mismatches farther than ``2 x forward tolerance x max|att_in|`` from
  a decision boundary.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

LOSSES = ("class_loss", "info_loss", "kl", "total_loss")
QUANTIZER_LOSSES = ("vq_loss", "commit_loss", "qt_loss")
FORWARD = ("logits", "att_mu_nhwc")
QUANTIZER_FORWARD = ("att_in_nhwc",)
INDEX, BOUNDARY = "att_q_index", "att_q_boundary_dist"
NOT_COMPARED = ("y", BOUNDARY)  # the labels, and the boundary distances the index rule reads
COUNTER_SUFFIX = ".num_batches_tracked"
MISSING_FROM_NPZ, NOT_PRODUCED = "listed by the manifest, absent from the npz", "not produced"
_KEY = re.compile(r"step(?P<step>\d+)/(?P<rest>.+)")


def probe_vector(seed: int, name: str, size: int) -> np.ndarray:
    """The fixed float64 random vector r of the tensor ``name`` (its statistics' third entry)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), 99]).standard_normal(size)


def tensor_stats(value: np.ndarray, r: np.ndarray) -> np.ndarray:
    """float64 ``[sum(v), ||v||_2, dot(v, r)]`` of ``value`` flattened in C order."""
    v = np.asarray(value, np.float64).reshape(-1)
    return np.array([np.sum(v), np.linalg.norm(v), np.dot(v, r)], np.float64)


def _stored_in_full(entry: Mapping[str, Any], full_max: int) -> bool:
    stored = entry.get("stored")
    return stored == "full" if stored is not None else int(np.prod(entry["shape"])) <= full_max


def compress(tensors: Mapping[str, np.ndarray], manifest: Mapping[str, Any], prefix: str, kind: str,
             initial: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The fixture keys of ``tensors`` ({official name: array in the official layout}) for one step.

    ``kind`` is ``"grad"`` (parameters only; statistics of the gradient), ``"after"`` or
    ``"ema"`` (every state_dict entry; statistics of the change from ``initial``).
    A name the manifest lists but ``tensors`` lacks is left out (the comparison reports it missing).
    """
    full_max = int(manifest["records"]["full_max"])
    seed = int(manifest["seed"])
    out: dict[str, np.ndarray] = {}
    for name, entry in manifest["state_entries"].items():
        if (kind == "grad" and entry["kind"] != "parameter") or name not in tensors:
            continue
        value = np.asarray(tensors[name])
        if _stored_in_full(entry, full_max):
            out[f"{prefix}{kind}/{name}"] = value
            continue
        if kind != "grad":
            if initial is None:
                raise ValueError(f"{kind} statistics of {name} need the initial state")
            value = value.astype(np.float64) - np.asarray(initial[name], np.float64)
        out[f"{prefix}{kind}_stats/{name}"] = tensor_stats(value, probe_vector(seed, name, value.size))
    return out


def expected_keys(manifest: Mapping[str, Any]) -> list[str]:
    """Every key the manifest says its npz holds: per step the labels, losses, forward records,
    gradients and states (and the EMA's), and the initial norms of the tensors kept as statistics."""
    quantized = bool(manifest.get("constructor_args", {}).get("qt_num"))
    full_max = int(manifest["records"]["full_max"])
    entries = manifest["state_entries"]
    keys: list[str] = []
    for s in range(int(manifest["num_steps"])):
        p = f"step{s}/"
        keys += [p + "y", *(p + k for k in LOSSES + FORWARD)]
        if quantized:
            keys += [p + k for k in QUANTIZER_LOSSES + QUANTIZER_FORWARD + (INDEX, BOUNDARY)]
        kinds = ("grad", "after") + (("ema",) if manifest.get("ema") else ())
        for kind in kinds:
            for name, entry in entries.items():
                if kind == "grad" and entry["kind"] != "parameter":
                    continue
                keys.append(f"{p}{kind}{'' if _stored_in_full(entry, full_max) else '_stats'}/{name}")
    for name, entry in entries.items():
        if not _stored_in_full(entry, full_max):
            keys += [f"init_l2/{name}", f"init_l1/{name}"]
    return keys


def tolerance_class(key: str, manifest: Mapping[str, Any]) -> str | None:
    """``s<step>_<kind>`` of a record, or None for keys that are not compared."""
    m = _KEY.fullmatch(key)
    if m is None:
        return None
    s, rest = m["step"], m["rest"]
    if rest in NOT_COMPARED:
        return None
    if rest in LOSSES + QUANTIZER_LOSSES:
        return f"s{s}_loss"
    if rest in FORWARD + QUANTIZER_FORWARD:
        return f"s{s}_forward"
    if rest == INDEX:
        return f"s{s}_index"
    kind, _, name = rest.partition("/")
    entry = manifest["state_entries"].get(name)
    if entry is None:
        return None
    if kind in ("grad", "grad_stats"):  # the true gradient of a zero-gradient parameter is 0: rounding noise
        return None if entry.get("zero_grad") else f"s{s}_grad"
    if kind in ("after", "after_stats"):
        if entry["kind"] == "buffer":
            return f"s{s}_count" if name.endswith(COUNTER_SUFFIX) else f"s{s}_buffer"
        return f"s{s}_param_zero_grad" if entry.get("zero_grad") else f"s{s}_param"
    if kind in ("ema", "ema_stats"):
        return f"s{s}_ema"
    return None


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared key: its class, error and how the error was measured."""

    key: str
    cls: str
    error: float
    how: str


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """One tolerance class: largest and median error against the manifest's bounds.

    A class with a missing record fails whatever its bounds (a ``None`` bound only says
    the value cannot be pinned down at that precision, not that it may be absent).
    """

    name: str
    n: int
    max_error: float
    max_key: str
    median_error: float
    tol_max: float | None
    tol_median: float | None
    missing: int = 0  # records absent from the npz or not produced

    @property
    def passed(self) -> bool:
        return (self.missing == 0 and (self.tol_max is None or self.max_error <= self.tol_max)
                and (self.tol_median is None or self.median_error <= self.tol_median))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


@dataclasses.dataclass(frozen=True)
class _Context:
    refs: Mapping[str, np.ndarray]
    initial: Mapping[str, np.ndarray]
    eps: float
    atol_eps: float
    forward_tol: Mapping[str, float | None]  # step -> s<step>_forward max bound


def key_error(key: str, ours: np.ndarray, ctx: _Context) -> tuple[float, str]:
    """The error of one record under the fixture's rule (see the module docstring)."""
    ref = np.asarray(ctx.refs[key])
    ours = np.asarray(ours)
    if ours.shape != ref.shape:
        return float("inf"), f"shape {ours.shape}, expected {ref.shape}"
    m = _KEY.fullmatch(key)
    rest = m["rest"]
    if rest.endswith(COUNTER_SUFFIX):
        return float(np.count_nonzero(ours != ref)), "exact"
    if rest == INDEX:
        fwd = ctx.forward_tol.get(m["step"])
        att = np.asarray(ctx.refs[f"step{m['step']}/att_in_nhwc"], np.float64)
        allowed = float("inf") if fwd is None else 2.0 * fwd * float(np.max(np.abs(att)))
        differ = ours != ref
        far = int(np.count_nonzero(differ & (np.asarray(ctx.refs[f"step{m['step']}/{BOUNDARY}"]) >= allowed)))
        return float(far), f"{int(np.count_nonzero(differ))} differ, {far} away from a boundary"
    o, r = ours.astype(np.float64), ref.astype(np.float64)
    kind, _, name = rest.partition("/")
    if rest in LOSSES + QUANTIZER_LOSSES:
        return _ratio(abs(float(o) - float(r)), abs(float(r))), "relative"
    if rest in FORWARD + QUANTIZER_FORWARD or kind == "grad":
        return _ratio(float(np.max(np.abs(o - r))), float(np.max(np.abs(r)))), "max|d| / max|ref|"
    if kind == "grad_stats":
        return _ratio(float(np.max(np.abs(o - r))), float(r[1])), "stats: max|d| / ||g_ref||"
    if kind in ("after", "ema"):
        floor = ctx.atol_eps * ctx.eps * float(np.max(np.abs(r)))
        excess = max(float(np.max(np.abs(o - r))) - floor, 0.0)
        change = float(np.max(np.abs(r - np.asarray(ctx.initial[name], np.float64))))
        return _ratio(excess, change), "(max|d| - ulps) / max|change|"
    if kind in ("after_stats", "ema_stats"):
        if f"init_l2/{name}" not in ctx.refs or f"init_l1/{name}" not in ctx.refs:
            return float("inf"), "the npz has no init_l2/init_l1 of this tensor"
        l2, l1 = float(ctx.refs[f"init_l2/{name}"]), float(ctx.refs[f"init_l1/{name}"])
        floors = ctx.atol_eps * ctx.eps * np.array([l1, l2, l2])
        excess = float(np.max(np.maximum(np.abs(o - r) - floors, 0.0)))
        return _ratio(excess, float(r[1])), "stats: (|d| - ulps) / ||change||"
    raise KeyError(f"no comparison rule for {key}")


def compare_records(ours: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray], manifest: Mapping[str, Any],
                    initial: Mapping[str, np.ndarray], precision: str) -> tuple[list[ClassResult], list[Row]]:
    """Every expected key the manifest's ``precision`` tolerances cover, compared; a key missing
    from the npz or from ``ours`` is an infinite error in its class. Expected keys that are
    read but not compared (labels, boundary distances, initial norms) and are missing from
    the npz make a failing class ``records``."""
    tolerances = manifest["tolerances"][precision]
    classes = tolerances["classes"]
    ctx = _Context(refs=refs, initial=initial, eps=float(np.finfo(np.dtype(precision)).eps),
                   atol_eps=float(tolerances["atol_eps"]),
                   forward_tol={k[1:].split("_")[0]: v["max"] for k, v in classes.items() if k.endswith("_forward")})
    rows, absent = [], []
    for key in dict.fromkeys([*expected_keys(manifest), *refs]):
        cls = tolerance_class(key, manifest)
        if cls is None or cls not in classes:
            if key not in refs:
                absent.append(key)
            continue
        if key not in refs:
            rows.append(Row(key, cls, float("inf"), MISSING_FROM_NPZ))
        elif key not in ours:
            rows.append(Row(key, cls, float("inf"), NOT_PRODUCED))
        else:
            rows.append(Row(key, cls, *key_error(key, ours[key], ctx)))
    results = []
    for cls in sorted({r.cls for r in rows}, key=_class_order):
        members = [r for r in rows if r.cls == cls]
        errors = [r.error for r in members]
        worst = max(members, key=lambda r: r.error)
        missing = sum(r.how in (MISSING_FROM_NPZ, NOT_PRODUCED) for r in members)
        results.append(ClassResult(cls, len(members), worst.error, worst.key, float(np.median(errors)),
                                   classes[cls].get("max"), classes[cls].get("median"), missing))
    if absent:
        rows += [Row(key, "records", float("inf"), MISSING_FROM_NPZ) for key in absent]
        results.append(ClassResult("records", len(absent), float("inf"), absent[0], float("inf"), 0.0, None,
                                   len(absent)))
    return results, rows


_KINDS = ("loss", "forward", "index", "buffer", "count", "grad", "param", "param_zero_grad", "ema")


def _class_order(cls: str) -> tuple[int, int]:
    step, _, kind = cls[1:].partition("_")
    return int(step), _KINDS.index(kind) if kind in _KINDS else len(_KINDS)
