"""Runs the per-device steps data-parallel: ``jax.shard_map`` on a 1-D mesh, or ``jax.pmap``.

A :class:`Runner` places the state, turns each host's batch into the step's input,
compiles the step once (it raises if a step is traced again) and brings results back
to the host. ``shard_map`` keeps the state as replicated global arrays; ``pmap`` keeps
a leading device axis, as pmap code always has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ib_attention_jax.training.step import AXIS

MODES = ("shard_map", "pmap")


class RecompilationError(RuntimeError):
    """A step function was traced more than once (shapes or dtypes changed between calls)."""


class Runner:
    """Data-parallel execution of pmap-style step functions over every device."""

    def __init__(self, mode: str = "shard_map", devices: list | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
        self.trace_counts: dict[str, int] = {}

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    # -- placement ---------------------------------------------------------------------------
    def replicate(self, tree: Any) -> Any:
        """Host pytree -> the state layout this runner's steps take."""
        if self.mode == "pmap":  # a leading device axis, placed as pmap places its outputs
            n = len(self.local_devices)
            stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
            return jax.pmap(lambda t: t, axis_name=AXIS, devices=self.devices)(stacked)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx, x=x: np.asarray(x)[idx]), tree)

    def unreplicate(self, tree: Any) -> Any:
        """The runner's state -> one host copy (numpy-backed jax arrays)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: jax.device_get(x[0]), tree)
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """This host's batch -> the step's batch input (global array or per-device stack)."""
        n_local = len(self.local_devices)
        for key, value in batch.items():
            if value.shape[0] % n_local:
                raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, not divisible by the "
                                 f"{n_local} local devices; choose a batch size divisible by the device count")
        if self.mode == "pmap":
            return {k: v.reshape((n_local, -1) + v.shape[1:]) for k, v in batch.items()}
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

    def gather(self, tree: Any) -> Any:
        """Per-example step outputs -> host numpy arrays in global batch order (this host's rows)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
        return jax.tree_util.tree_map(
            lambda x: np.concatenate([np.asarray(s.data) for s in sorted(x.addressable_shards,
                                                                      key=lambda s: s.index[0].start or 0)]), tree)

    # -- compilation -------------------------------------------------------------------------
    def _counted(self, name: str, fn: Callable) -> Callable:
        def wrapped(*args):
            self.trace_counts[name] = self.trace_counts.get(name, 0) + 1
            if self.trace_counts[name] > 1:
                raise RecompilationError(f"{name} was traced {self.trace_counts[name]} times; "
                                         "batch shapes or dtypes changed between steps")
            return fn(*args)

        return wrapped

    def compile_train_step(self, step: Callable, name: str = "train_step") -> Callable:
        """``(state, batch) -> (state, metrics)``; the state is donated, metrics come back replicated.

        A step from ``make_train_step`` made without an axis name is the same step over ``data``."""
        if getattr(step, "axis_name", AXIS) is None:
            step = step.for_axis(AXIS)
        fn = self._counted(name, step)
        if self.mode == "pmap":
            pstep = jax.pmap(fn, axis_name=AXIS, devices=self.devices, donate_argnums=(0,))

            def run(state, batch):
                new_state, metrics = pstep(state, batch)
                return new_state, jax.tree_util.tree_map(lambda m: m[0], metrics)

            return run
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False)
        return jax.jit(mapped, donate_argnums=(0,))

    def compile_eval_step(self, step: Callable, name: str = "eval_step") -> Callable:
        """``(state, batch) -> per-example outputs`` (sharded along the batch)."""
        fn = self._counted(name, step)
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=self.devices)
        return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                                     check_vma=False))


def train_feed(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """What the train step takes from one host batch: images, int32 labels and the rows' global positions
    (``host_batch_index``, from which each example's noise key is folded)."""
    return {"image": np.asarray(images), "label": np.asarray(labels).astype(np.int32), "index": index}


def host_batch_index(batch_size: int, process_index: int | None = None) -> np.ndarray:
    """Global example positions (within the global batch) of this host's ``batch_size`` rows."""
    p = jax.process_index() if process_index is None else process_index
    return (p * batch_size + np.arange(batch_size)).astype(np.int32)

