"""Official PyTorch state_dicts <-> Flax variables of the registered models.

A state_dict here is a mapping from official key names to numpy arrays (PyTorch
layouts: conv OIHW, linear (out, in)). Import strips wrapper prefixes (DataParallel's
``module.``, torch.compile's ``_orig_mod.``), reads bfloat16 tensors as float32, accepts
alias keys (the same module registered twice), reads each BatchNorm's
``num_batches_tracked`` counter (0 where a state_dict has none, as PyTorch's loader does)
and ignores dead modules; export writes every key the official
``load_state_dict(strict=True)`` expects, aliases and counters (int64) included.
``from_state_dict(..., strict=False)`` loads what fits and reports the rest (starting a
run from other weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, overload

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ib_attention_jax.errors import UserError
from ib_attention_jax.interop.load_report import IGNORED, KEPT, LOADED, LoadReport, build_report
from ib_attention_jax.interop.naming import FAMILIES, Family, torch_module_name
from ib_attention_jax.models.registry import ModelSpec, get_spec

COLLECTIONS = ("params", "batch_stats")
COUNTER = "num_batches_tracked"  # the BatchNorm step counter: batch_stats leaf and torch key suffix


class StateDictError(UserError, ValueError):
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


def _is_bfloat16(value: Any) -> bool:
    return str(getattr(value, "dtype", "")) in ("torch.bfloat16", "bfloat16")


def as_numpy(value: Any, key: str = "") -> np.ndarray:
    """A torch tensor or array as numpy; bfloat16 becomes float32, exactly (each bfloat16 is a float32).

    numpy has no bfloat16 of its own (a torch ``.numpy()`` refuses it); a value that cannot
    be read as an array is a StateDictError naming ``key``.
    """
    try:
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
            if _is_bfloat16(value):
                value = value.float()
            value = value.numpy()
        array = np.asarray(value)
    except (TypeError, RuntimeError, ValueError) as err:
        raise StateDictError(f"{key or 'value'}: cannot be read as an array ({type(err).__name__}: {err})") from None
    return array.astype(np.float32) if _is_bfloat16(array) else array


def _canonical_key(key: str, family: Family) -> str | None:
    for alias, canonical in family.aliases.items():
        if key.startswith(alias):
            return canonical + key[len(alias):]
    return None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # (Distributed)DataParallel, torch.compile


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``(state_dict, removed)``: wrapper prefixes every key carries removed, nested ones too.

    DataParallel adds ``module.`` (twice when wrapped twice), ``torch.compile`` adds
    ``_orig_mod.``, in either order; ``removed`` is what was taken off (``""`` if nothing).
    """
    sd, removed = dict(state_dict), ""
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd, removed = {k[len(prefix):]: v for k, v in sd.items()}, removed + prefix
    return sd, removed


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes the wrapper prefixes (``module.``, ``_orig_mod.``, nested) when every key carries them."""
    return strip_wrapper_prefixes(state_dict)[0]


@dataclasses.dataclass
class _Match:
    """How a state_dict's keys meet the model's variables."""

    flat: dict[tuple[str, ...], Any]  # loaded: Flax path (collection first) -> array
    missing: list[tuple[tuple[str, ...], str]]  # (Flax path, torch key) with no tensor
    unexpected: list[str]
    misshaped: list[str]
    source: dict[str, bool]  # every source key (after stripping and aliases) -> used
    dead: dict[str, np.ndarray]  # tensors of modules the official class registers but never uses
    zeroed: set[tuple[str, ...]]  # counters the state_dict lacks, set to 0 as PyTorch's loader does
    notes: list[str]


def _match(model: nn.Module, state_dict: Mapping[str, Any]) -> _Match:
    family = FAMILIES[_spec_of(model).family]
    stripped, removed = strip_wrapper_prefixes(state_dict)
    notes = [f"removed the key prefix {removed!r}"] if removed else []
    bf16 = sum(_is_bfloat16(v) for v in stripped.values())
    if bf16:
        notes.append(f"converted {bf16} bfloat16 tensors to float32")
    sd = {k: as_numpy(v, k) for k, v in stripped.items()}
    folded = 0
    for key in list(sd):  # an alias stands in for a missing canonical key
        canonical = _canonical_key(key, family)
        if canonical is not None:
            value = sd.pop(key)
            folded += canonical in sd
            sd.setdefault(canonical, value)
    if folded:
        notes.append(f"{folded} alias keys (modules the official class registers twice) read as their canonical keys")
    flat: dict[tuple[str, ...], Any] = {}
    missing, misshaped, used, zeroed = [], [], set(), set()
    for path, module_name, key, leaf, sds in _entries(model):
        if key not in sd and leaf == COUNTER:  # a state_dict from before the counter existed
            flat[path] = jnp.zeros(sds.shape, sds.dtype)
            zeroed.add(path)
            continue
        if key not in sd:
            missing.append((path, key))
            continue
        used.add(key)
        value = _from_torch(sd[key], leaf, module_name, family)
        if tuple(value.shape) != tuple(sds.shape):
            expected = _to_torch(np.zeros(sds.shape, np.float32), leaf, module_name, family).shape
            misshaped.append(f"{key}: got {tuple(sd[key].shape)}, expected {tuple(expected)}")
            continue
        flat[path] = jnp.asarray(value, sds.dtype)
    dead = {k: v for k, v in sd.items() if family.dead_prefixes and k.startswith(family.dead_prefixes)}
    unexpected = [k for k in sd if k not in used and not k.endswith(".num_batches_tracked") and k not in dead]
    return _Match(flat, missing, unexpected, misshaped, {k: k in used for k in sd}, dead, zeroed, notes)


_SHOWN = 5  # keys an error lists of each kind


def _listing(kind: str, keys: list[str], sep: str = ", ") -> str:
    more = f" and {len(keys) - _SHOWN} more ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return f"{kind}: {sep.join(keys[:_SHOWN])}{more}"


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when the two key sets differ by a leading component (``model.``, ``backbone.``...)."""
    if not missing or not unexpected:
        return ""
    want, have = set(missing), set(unexpected)
    for extra, lacking in ((have, want), (want, have)):
        for prefix in sorted({k.split(".", 1)[0] + "." for k in extra if "." in k}):
            if sum(k[len(prefix):] in lacking for k in extra if k.startswith(prefix)) >= min(len(lacking), 3):
                side = "state_dict's keys carry" if extra is have else "model's keys carry"
                return (f"hint: the {side} a prefix {prefix!r} the other side lacks: rename the keys "
                        f"(only the wrappers {' and '.join(map(repr, WRAPPER_PREFIXES))} are removed automatically)")
    if len(missing) > 10 and len(unexpected) > 10:
        return ("hint: this looks like another model's state_dict; to load only the parts that fit, use "
                "from_state_dict(..., strict=False) (what the config option init_from does)")
    return ""


def _problems(model: nn.Module, m: _Match, what: str = "state_dict does not fit") -> StateDictError:
    missing = [key for _, key in m.missing]
    counts = [f"{len(x)} {name}" for x, name in ((missing, "missing"), (m.unexpected, "unexpected"),
                                                   (m.misshaped, "mis-shaped")) if x]
    parts = [_listing("missing keys", missing) if missing else "",
             _listing("unexpected keys", m.unexpected) if m.unexpected else "",
             _listing("mis-shaped keys", m.misshaped, "; ") if m.misshaped else "",
             _prefix_hint(missing, m.unexpected)]
    return StateDictError(f"{what} {model.model_name} ({', '.join(counts)}): " + " | ".join(p for p in parts if p))


@overload
def from_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, strict: Literal[True] = ...,
                    init: Mapping[str, Any] | None = ..., source: str = ...) -> dict[str, Any]: ...


@overload
def from_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, strict: Literal[False],
                    init: Mapping[str, Any], source: str = ...) -> tuple[dict[str, Any], LoadReport]: ...


def from_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True,
                    init: Mapping[str, Any] | None = None, source: str = ""):
    """Flax variables (``{'params': ..., 'batch_stats': ...}``) from an official state_dict.

    ``strict=True``: every variable must come from the state_dict and every key must be
    used; otherwise a StateDictError gives the counts, the first keys of each kind and,
    where the key sets differ by a prefix, a hint. ``strict=False`` (starting from other
    weights) takes what fits and keeps the rest of ``init`` (the model's initial
    variables); it returns ``(variables, LoadReport)`` naming the groups loaded, kept at
    init and ignored, and still refuses a tensor of the wrong shape, naming its key.
    Wrapper prefixes (``module.``, ``_orig_mod.``) are removed and bfloat16 tensors read
    as float32.
    """
    m = _match(model, state_dict)
    if strict:
        if m.missing or m.unexpected or m.misshaped:
            raise _problems(model, m)
        return traverse_util.unflatten_dict(m.flat)
    if init is None:
        raise ValueError("from_state_dict(..., strict=False) needs init=: the variables to keep where "
                         "the state_dict has no tensor (e.g. model.init(...))")
    if m.misshaped:
        raise StateDictError(f"{_listing('mis-shaped keys', m.misshaped, '; ')}: a partial load keeps missing "
                             f"tensors at init but cannot use a tensor of another shape in {model.model_name} "
                             "(another class count, latent size or number of anchors? set them to match)")
    if not any(m.source.values()):
        raise _problems(model, m, "no key of the state_dict fits")
    init_flat = traverse_util.flatten_dict({c: init[c] for c in COLLECTIONS if c in init})
    flat = dict(m.flat)
    statuses = {path[1:]: LOADED for path in m.flat if path not in m.zeroed}  # the tree without collections
    for path, key in m.missing:
        if path not in init_flat:
            raise StateDictError(f"init has no {'/'.join(path)} (torch key {key}): pass the model's own variables")
        flat[path], statuses[path[1:]] = init_flat[path], KEPT
    kept_modules = {path[1:-1] for path, _ in m.missing}
    zeroed = 0
    for path in m.zeroed:  # a counter goes with its module: kept at init where the module is
        if path[1:-1] in kept_modules and path in init_flat:
            flat[path] = init_flat[path]
        else:
            zeroed += 1
    used_modules = {k.rsplit(".", 1)[0] for k, used in m.source.items() if used}
    source_status = {tuple(k.split(".")): LOADED if used else IGNORED for k, used in m.source.items()
                     if used or not (k.endswith(COUNTER) and k.rsplit(".", 1)[0] in used_modules)}
    notes = m.notes + ([f"{zeroed} BatchNorm counters (num_batches_tracked) absent: set to 0"] if zeroed else [])
    report = build_report(model.model_name, statuses, source_status, source=source, notes=notes,
                          passthrough=m.dead)
    return traverse_util.unflatten_dict(flat), report


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
