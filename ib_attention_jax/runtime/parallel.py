"""Runs the per-device steps data-parallel: ``jax.shard_map`` on a 1-D mesh, or ``jax.pmap``.

A :class:`Runner` places the state, turns each host's batch into the step's input,
compiles the step once (it raises if a step is traced again) and brings results back
to the host. ``shard_map`` keeps the state as replicated global arrays; ``pmap`` keeps
a leading device axis, as pmap code always has. Checkpoints always hold the
``shard_map`` layout (:meth:`Runner.checkpoint_view`, :meth:`Runner.abstract_state`,
:meth:`Runner.from_checkpoint`), so a checkpoint restores under either mode and on any
device count.

The train step also agrees on stopping: each host puts its stop request (a signal
number, 0 for none) into the batch (``shard_batch(batch, stop=...)``), and the compiled
step returns the largest over every device of every host as ``metrics["stop"]``, so all
hosts read the same value after the same step without a separate host synchronisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"  # the mesh axis every step is mapped over
MODES = ("shard_map", "pmap")
STOP = "stop"  # the batch entry (one int32 per device) and the metric holding the agreed stop request


class RecompilationError(RuntimeError):
    """A step function was traced more than once (shapes or dtypes changed between calls)."""


def make_data_mesh(devices: list) -> Mesh:
    """The 1-D ``data`` mesh over ``devices`` (``jax.make_mesh``; the axis type is given explicitly, since the
    default changed between jax versions). ``Explicit``: the batch's sharding is part of its type."""
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Explicit,), devices=devices)


def with_stop_agreement(step: Callable) -> Callable:
    """``step`` taking a batch that may hold :data:`STOP` (per device, shape (1,)): the entry is taken out of the
    batch and the maximum over the data axis is added to the metrics. A batch without it is passed as it is."""

    def agreed(state, batch):
        if STOP not in batch:
            return step(state, batch)
        batch = dict(batch)
        stop = batch.pop(STOP)
        new_state, metrics = step(state, batch)
        return new_state, {**metrics, STOP: lax.pmax(jnp.max(stop), AXIS)}

    return agreed


@functools.partial(jax.jit, static_argnums=1)
def _reshaped(tree: Any, leading: bool) -> Any:
    """Every leaf with a leading axis of 1 added (``leading``) or dropped; runs on the leaves' device."""
    return jax.tree_util.tree_map(lambda x: x[None] if leading else x[0], tree)


class Runner:
    """Data-parallel execution of pmap-style step functions over every device."""

    def __init__(self, mode: str = "shard_map", devices: list | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = make_data_mesh(self.devices)
        self.trace_counts: dict[str, int] = {}
        self._pmap_shardings: dict[int, Any] = {}

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def replicated(self) -> NamedSharding:
        """The sharding of the state in the ``shard_map`` layout (and in checkpoints): replicated on the mesh."""
        return NamedSharding(self.mesh, P())

    # -- placement ---------------------------------------------------------------------------
    def replicate(self, tree: Any) -> Any:
        """Host pytree -> the state layout this runner's steps take."""
        if self.mode == "pmap":  # a leading device axis, placed as pmap places its outputs
            n = len(self.local_devices)
            stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
            return jax.pmap(lambda t: t, axis_name=AXIS, devices=self.devices)(stacked)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(np.shape(x), self.replicated, lambda idx, x=x: np.asarray(x)[idx]),
            tree)

    def unreplicate(self, tree: Any) -> Any:
        """The runner's state -> one host copy (numpy-backed jax arrays)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: jax.device_get(x[0]), tree)
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

    # -- checkpoint layout --------------------------------------------------------------------
    def abstract_state(self, tree: Any) -> Any:
        """``tree``'s leaves as ``jax.ShapeDtypeStruct`` replicated on this runner's mesh: the target a checkpoint
        is restored against (each host reads its devices' copies; no host holds a gathered state)."""
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=self.replicated), tree)

    def checkpoint_view(self, pstate: Any) -> Any:
        """The runner's state as the global arrays a checkpoint holds (replicated on the mesh), without a host copy:
        the state itself under ``shard_map``; under ``pmap`` each device's copy without the leading axis."""
        if self.mode != "pmap":
            return pstate
        per_device = self._per_device(pstate)
        drop = {d: _reshaped(tree, False) for d, tree in per_device.items()}
        return self._assemble(pstate, drop, lambda x: x.shape[1:], lambda x: self.replicated)

    def from_checkpoint(self, state: Any) -> Any:
        """A restored state (global arrays replicated on the mesh, :meth:`abstract_state`) -> the runner's layout."""
        if self.mode != "pmap":
            return state
        n = len(self.local_devices)
        add = {d: _reshaped(tree, True) for d, tree in self._per_device(state).items()}
        return self._assemble(state, add, lambda x: (n,) + x.shape, lambda x: self._pmap_sharding(x.ndim + 1))

    def _per_device(self, tree: Any) -> dict[Any, Any]:
        """{local device: the tree of that device's shards}."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        shards = [{s.device: s.data for s in leaf.addressable_shards} for leaf in leaves]
        return {d: jax.tree_util.tree_unflatten(treedef, [s[d] for s in shards]) for d in self.local_devices}

    def _assemble(self, tree: Any, per_device: dict[Any, Any], shape: Callable, sharding: Callable) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        device_leaves = {d: jax.tree_util.tree_leaves(t) for d, t in per_device.items()}
        out = []
        for i, leaf in enumerate(leaves):
            target = sharding(leaf)
            arrays = [device_leaves[d][i] for d in target.addressable_devices_indices_map(shape(leaf))]
            out.append(jax.make_array_from_single_device_arrays(shape(leaf), target, arrays))
        return jax.tree_util.tree_unflatten(treedef, out)

    def _pmap_sharding(self, ndim: int):
        """The sharding pmap gives an output of ``ndim`` dimensions (the leading one over the local devices)."""
        if ndim not in self._pmap_shardings:
            probe = np.zeros((len(self.local_devices),) + (1,) * (ndim - 1), np.float32)
            self._pmap_shardings[ndim] = jax.pmap(lambda t: t, axis_name=AXIS, devices=self.devices)(probe).sharding
        return self._pmap_shardings[ndim]

    # -- batches -------------------------------------------------------------------------------
    def shard_batch(self, batch: dict[str, np.ndarray], stop: int | None = None) -> dict[str, Any]:
        """This host's batch -> the step's batch input (global array or per-device stack).

        ``stop`` (a train step's input only): this host's stop request, 0 for none, given to each of its
        devices; the compiled train step returns the largest over all hosts as ``metrics["stop"]``."""
        n_local = len(self.local_devices)
        for key, value in batch.items():
            if value.shape[0] % n_local:
                raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, not divisible by the "
                                 f"{n_local} local devices; choose a batch size divisible by the device count")
        if stop is not None:
            batch = {**batch, STOP: np.full((n_local,), stop, np.int32)}
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

        A step from ``make_train_step`` made without an axis name is the same step over ``data``. A batch
        from ``shard_batch(..., stop=)`` adds the agreed ``metrics["stop"]``."""
        if getattr(step, "axis_name", AXIS) is None:
            step = step.for_axis(AXIS)
        fn = self._counted(name, with_stop_agreement(step))
        if self.mode == "pmap":
            pstep = jax.pmap(fn, axis_name=AXIS, devices=self.devices, donate_argnums=(0,))

            def run(state, batch):
                new_state, metrics = pstep(state, batch)
                return new_state, jax.tree_util.tree_map(lambda m: m[0], metrics)

            return run
        # The replication check stays off here: with it, jax types the replicated parameters as invariant and
        # differentiating a per-device loss by them already sums the gradient over the axis, so the step's
        # pmap-style ``pmean(grads)`` would return N x the mean. The step would have to average the summed
        # gradient instead (and pmap has no such typing), so the check is on for the eval step only.
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False)
        return jax.jit(mapped, donate_argnums=(0,))

    def compile_eval_step(self, step: Callable, name: str = "eval_step") -> Callable:
        """``(state, batch) -> per-example outputs`` (sharded along the batch; replication check on)."""
        fn = self._counted(name, step)
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=self.devices)
        return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                                     check_vma=True))


def train_feed(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """What the train step takes from one host batch: images, int32 labels and the rows' global positions
    (``host_batch_index``, from which each example's noise key is folded)."""
    return {"image": np.asarray(images), "label": np.asarray(labels).astype(np.int32), "index": index}


def host_batch_index(batch_size: int, process_index: int | None = None) -> np.ndarray:
    """Global example positions (within the global batch) of this host's ``batch_size`` rows."""
    p = jax.process_index() if process_index is None else process_index
    return (p * batch_size + np.arange(batch_size)).astype(np.int32)


def example_ids(batch: dict[str, jax.Array]) -> jax.Array:
    """Inside a step: ``batch["index"]``, the examples' positions in the global batch (:func:`host_batch_index`),
    or ``arange(b)`` without it. Each example's noise is folded from its position, on any device count."""
    if "index" in batch:
        return batch["index"].astype(jnp.int32)
    return jnp.arange(batch["label"].shape[0], dtype=jnp.int32)
