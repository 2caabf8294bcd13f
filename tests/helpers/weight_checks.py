"""Shared by the weight import/export tests: variables from shapes, bitwise comparisons, fixture manifests."""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np
from flax import traverse_util

from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.state_dict import variable_shapes

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"


def random_variables(model, seed: int = 0) -> dict:
    """Distinct random numpy values for every variable of ``model`` (no init, nothing compiled)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, sds in traverse_util.flatten_dict(dict(variable_shapes(model))).items():
        if path[-1] == "var":
            out[path] = rng.uniform(0.5, 1.5, sds.shape).astype(sds.dtype)
        elif np.issubdtype(sds.dtype, np.integer):
            out[path] = rng.integers(0, 1000, sds.shape).astype(sds.dtype)
        else:
            out[path] = rng.standard_normal(sds.shape, dtype=np.float32).astype(sds.dtype)
    return traverse_util.unflatten_dict(out)


def bits_equal(x, y) -> bool:
    """Bitwise equality of two arrays (dtype, shape and every bit)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return np.array_equal(x.view(f"u{x.dtype.itemsize}"), y.view(f"u{y.dtype.itemsize}"))


def assert_state_dicts_bitwise_equal(a, b) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:10]
    for key in a:
        assert bits_equal(np.asarray(a[key]), np.asarray(b[key])), key


def assert_trees_bitwise_equal(a, b) -> None:
    fa, fb = traverse_util.flatten_dict(dict(a)), traverse_util.flatten_dict(dict(b))
    assert fa.keys() == fb.keys()
    for path in fa:
        assert bits_equal(np.asarray(fa[path]), np.asarray(fb[path])), path


@functools.cache
def parity_manifest(name: str) -> dict:
    return json.loads((FIXTURES / "official_parity" / f"{name}_seed0.json").read_text())


@functools.cache
def parity_state_dict(name: str) -> dict[str, np.ndarray]:
    """The synthetic official state_dict of a parity fixture (cached: some take seconds)."""
    return state_dict_from_manifest(parity_manifest(name))


def torch_state_dict(state_dict, prefix: str = ""):
    """numpy -> torch tensors (the torch extra), keys with ``prefix``."""
    import torch

    return {prefix + k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}


def numpy_state_dict(state_dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
