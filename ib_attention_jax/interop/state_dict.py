"""Official PyTorch state_dicts <-> Flax variables of the registered models.

A state_dict here is a mapping from official key names to numpy arrays (PyTorch
layouts: conv OIHW, linear (out, in)). Import strips DataParallel's ``module.``
prefix, accepts alias keys (the same module registered twice), reads each
BatchNorm's ``num_batches_tracked`` counter (0 where a state_dict has none, as
PyTorch's loader does) and ignores dead modules; export writes every key the official
``load_state_dict(strict=True)`` expects, aliases and counters (int64) included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ib_attention_jax.interop.naming import FAMILIES, Family, torch_module_name
from ib_attention_jax.models.registry import ModelSpec, get_spec

COLLECTIONS = ("params", "batch_stats")
COUNTER = "num_batches_tracked"  # the BatchNorm step counter: batch_stats leaf and torch key suffix


class StateDictError(ValueError):
    """A state_dict key is missing, unexpected or mis-shaped for the model."""


def _spec_of(model: nn.Module) -> ModelSpec:
    name = getattr(model, "model_name", None)
    if name is None:
        raise TypeError("pass a model built by ib_attention_jax.create_model")
    return get_spec(name)


def variable_shapes(model: nn.Module) -> dict[str, Any]:
    """The model's variables as ShapeDtypeStructs, without running or allocating anything."""
    spec = _spec_of(model)
    size = getattr(model, "image_size", None) or spec.image_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, deterministic=True))


def _leaf_key(module_name: str, collection: str, leaf: str, ndim: int) -> str:
    if collection == "batch_stats":
        return f"{module_name}.{COUNTER}" if leaf == COUNTER else f"{module_name}.running_{leaf}"
    if leaf == "anchors":
        return f"{module_name}.weight"
    return f"{module_name}.{'weight' if leaf in ('kernel', 'scale') else leaf}"


def _to_torch(value: np.ndarray, leaf: str, module_name: str, family: Family) -> np.ndarray:
    """Flax layout -> PyTorch layout for one leaf."""
    if leaf == COUNTER:
        return np.asarray(value, np.int64)  # PyTorch's dtype for the counter
    if leaf == "anchors":
        return value.reshape(1, -1)
    if leaf != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if module_name in family.nchw_flatten:  # NHWC-flatten kernel (h*w*c, out) -> NCHW (out, c*h*w)
        h, w = family.nchw_flatten[module_name]
        out = value.shape[1]
        return value.T.reshape(out, h, w, -1).transpose(0, 3, 1, 2).reshape(out, -1)
    return value.T


def _from_torch(value: np.ndarray, leaf: str, module_name: str, family: Family) -> np.ndarray:
    """PyTorch layout -> Flax layout for one leaf (the inverse of :func:`_to_torch`)."""
    if leaf == "anchors":
        return value.reshape(-1)
    if leaf != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.ndim != 2:
        return value  # wrong rank: the shape check names it
    if module_name in family.nchw_flatten:
        h, w = family.nchw_flatten[module_name]
        out = value.shape[0]
        if value.shape[1] % (h * w):
            return value  # not an (out, c*h*w) weight: the shape check names the key
        return value.reshape(out, -1, h, w).transpose(0, 2, 3, 1).reshape(out, -1).T
    return value.T


def _entries(model: nn.Module) -> list[tuple[tuple[str, ...], str, str, str, Any]]:
    """(flax path, module name, torch key, leaf, ShapeDtypeStruct) for every variable."""
    spec = _spec_of(model)
    family = FAMILIES[spec.family]
    shapes = variable_shapes(model)
    rows = []
    for collection in COLLECTIONS:
        flat = traverse_util.flatten_dict(shapes.get(collection, {}))
        for path, sds in flat.items():
            module_name = torch_module_name(family, "/".join(path[:-1]), plain=spec.plain)
            key = _leaf_key(module_name, collection, path[-1], len(sds.shape))
            rows.append(((collection,) + path, module_name, key, path[-1], sds))
    return rows


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _canonical_key(key: str, family: Family) -> str | None:
    for alias, canonical in family.aliases.items():
        if key.startswith(alias):
            return canonical + key[len(alias):]
    return None


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes DataParallel's ``module.`` prefix when every key carries it."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def from_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables (``{'params': ..., 'batch_stats': ...}``) from an official state_dict.

    Raises StateDictError naming every missing, unexpected or mis-shaped key.
    """
    family = FAMILIES[_spec_of(model).family]
    sd = {k: _as_numpy(v) for k, v in strip_module_prefix(state_dict).items()}
    for key in list(sd):  # an alias stands in for a missing canonical key
        canonical = _canonical_key(key, family)
        if canonical is not None:
            value = sd.pop(key)
            sd.setdefault(canonical, value)
    flat: dict[tuple[str, ...], jax.Array] = {}
    missing, misshaped, used = [], [], set()
    for path, module_name, key, leaf, sds in _entries(model):
        if key not in sd and leaf == COUNTER:  # a state_dict from before the counter existed
            flat[path] = jnp.zeros(sds.shape, sds.dtype)
            continue
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        value = _from_torch(sd[key], leaf, module_name, family)
        if tuple(value.shape) != tuple(sds.shape):
            expected = _to_torch(np.zeros(sds.shape, np.float32), leaf, module_name, family).shape
            misshaped.append(f"{key}: got {tuple(sd[key].shape)}, expected {tuple(expected)}")
            continue
        flat[path] = jnp.asarray(value, sds.dtype)
    unexpected = [k for k in sd if k not in used and not k.endswith(".num_batches_tracked")
                  and not k.startswith(family.dead_prefixes or ("\0",))]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {'; '.join(misshaped)}")
    if problems:
        raise StateDictError(f"state_dict does not fit {model.model_name}: " + " | ".join(problems))
    return traverse_util.unflatten_dict(flat)


def to_state_dict(model: nn.Module, variables: Mapping[str, Any], *, include_aliases: bool = True,
                  include_counters: bool = True) -> dict[str, np.ndarray]:
    """The official state_dict of Flax ``variables`` (numpy arrays, PyTorch layouts).

    With the defaults it holds every key of the official module: alias keys repeat
    their canonical tensor and each BatchNorm's ``num_batches_tracked`` is its counter
    (int64; 0 for variables that have none).
    ``include_counters=False`` leaves the counters out.
    The CUB WRN-50-2's dead ``tmp_layer`` is not written; load it with ``strict=False``.
    """
    family = FAMILIES[_spec_of(model).family]
    flat = traverse_util.flatten_dict({c: variables[c] for c in COLLECTIONS if c in variables})
    out: dict[str, np.ndarray] = {}
    for path, module_name, key, leaf, _ in _entries(model):
        if leaf == COUNTER:
            if include_counters:
                out[key] = _to_torch(np.asarray(flat.get(path, 0)), leaf, module_name, family)
            continue
        if path not in flat:
            raise StateDictError(f"variables have no {'/'.join(path)} (torch key {key})")
        out[key] = _to_torch(np.asarray(flat[path]), leaf, module_name, family)
    if include_aliases and not _spec_of(model).plain:  # the plain baselines register nothing twice
        for alias, canonical in family.aliases.items():
            for key in [k for k in out if k.startswith(canonical)]:
                out[alias + key[len(canonical):]] = out[key].copy()
    return out
