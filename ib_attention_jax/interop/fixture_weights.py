"""Deterministic synthetic official-style state_dicts (the parity fixtures' weight recipe).

Each tensor has its own generator ``np.random.default_rng([seed, crc32(name)])``; draws
are float64, cast to float32. Conv/linear weights ``gain * N(0,1) / sqrt(fan_in)``,
biases ``0.1 N``, BatchNorm weight ``1 + 0.1 N``, bias and running mean ``0.1 N``,
running var ``1 + 0.5 U(0,1)``, ``num_batches_tracked`` 0 (int64), anchors
``linspace(0, 1, Q) + 0.01 N``. Alias keys copy their canonical tensor.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("weight", "bias", "bn_weight", "bn_bias", "bn_mean", "bn_var", "bn_count", "anchors")


def tensor_kind(name: str, all_names: set[str]) -> str:
    """The filling rule of ``name`` given every name in the state_dict."""
    if name.endswith(".running_mean"):
        return "bn_mean"
    if name.endswith(".running_var"):
        return "bn_var"
    if name.endswith(".num_batches_tracked"):
        return "bn_count"
    prefix, _, leaf = name.rpartition(".")
    if leaf in ("weight", "bias") and f"{prefix}.running_mean" in all_names:
        return f"bn_{leaf}"
    if name == "emb.weight" or name.endswith(".emb.weight"):
        return "anchors"
    if leaf in ("weight", "bias"):
        return leaf
    raise ValueError(f"cannot tell the kind of tensor {name!r}")


def _draw(kind: str, shape: tuple[int, ...], rng: np.random.Generator, gain: float) -> np.ndarray:
    if kind == "weight":
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return gain * rng.standard_normal(shape) / np.sqrt(fan_in)
    if kind in ("bias", "bn_bias", "bn_mean"):
        return 0.1 * rng.standard_normal(shape)
    if kind == "bn_weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if kind == "bn_var":
        return 1.0 + 0.5 * rng.uniform(0.0, 1.0, shape)
    if kind == "anchors":
        return np.linspace(0.0, 1.0, shape[-1]) + 0.01 * rng.standard_normal(shape)
    raise ValueError(f"unknown tensor kind {kind!r}")


def synthetic_state_dict(spec: Iterable[Sequence[Any]], seed: int, aliases: Mapping[str, str] | None = None,
                         weight_gain: float = 1.0) -> dict[str, np.ndarray]:
    """Fills every ``(name, shape[, dtype[, kind]])`` of ``spec``; insertion-ordered like ``spec``."""
    entries = [(e[0], tuple(int(s) for s in e[1]), e[3] if len(e) > 3 else None) for e in spec]
    names = {name for name, _, _ in entries}
    aliases = dict(aliases or {})
    filled: dict[str, np.ndarray] = {}
    for name, shape, kind in entries:
        if name in aliases:
            continue
        kind = kind or tensor_kind(name, names)
        if kind == "bn_count":
            filled[name] = np.zeros(shape, np.int64)
            continue
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
        filled[name] = np.asarray(_draw(kind, shape, rng, weight_gain), np.float64).astype(np.float32)
    out: dict[str, np.ndarray] = {}
    for name, _shape, _ in entries:
        if name in aliases:
            canonical = aliases[name]
            if canonical not in filled:
                raise KeyError(f"alias {name!r} points to {canonical!r}, which is not in the spec")
            out[name] = filled[canonical].copy()
        else:
            out[name] = filled[name]
    return out


def state_dict_from_manifest(manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state_dict a parity fixture's manifest (its JSON) describes."""
    return synthetic_state_dict(manifest["state_dict"], manifest["seed"], manifest.get("aliases", {}),
                                float(manifest.get("weight_gain", 1.0)))
