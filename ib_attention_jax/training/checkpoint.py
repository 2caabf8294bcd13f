"""Orbax checkpoints of the whole training state and the input position, tagged with the run they belong to.

A checkpoint holds the TrainState (params, batch stats, optimiser state, EMA, step, RNG key), the input
iterator's state and the id of the run that wrote it, so a restored run continues the same trajectory.
Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save
never replaces a good checkpoint.

* Saves take the state as the global ``jax.Array`` s it is (each host writes its part; nobody gathers the
  model) and are asynchronous: :meth:`Checkpointer.save` returns once the arrays are copied off the
  devices, the files are written in the background, and the next save, :meth:`Checkpointer.wait` and
  :meth:`Checkpointer.close` wait for them (a failed background write surfaces there, as the same
  error a synchronous save raises). Pruning and any ``on_complete`` work run only once a save is complete.
* Restores go into the target's shardings: a tree of ``jax.ShapeDtypeStruct`` with ``sharding=`` (the
  runner's layout, on any device count), concrete arrays (their placement), or None (one local device).

* Restore: the newest readable checkpoint of this run; one that cannot be read is skipped with a warning.
  When checkpoints exist and none can be restored, :class:`UnrestorableCheckpointsError` lists each with
  its reason: a run never starts again from step 0 on top of another's work.
* Keep-last-k: only checkpoints this run wrote (its id) are ever pruned; others are left as they are.
* A save that fails (a full disk, a read-only folder) is one :class:`CheckpointSaveError` naming the
  path and the free space; its partial directory is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from ib_attention_jax.errors import UserError
from ib_attention_jax.runtime.paths import as_path

log = logging.getLogger(__name__)
RUN_ITEM = "run"  # the JSON item {"run_id": ...} saved with every checkpoint
_DISK_FULL = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")
_NOT_WRITABLE = ("Permission denied", "Read-only file system")


class CheckpointError(UserError):
    """Checkpoints that cannot be used as asked; the message names each and the way out."""


class UnrestorableCheckpointsError(CheckpointError):
    """Checkpoints exist but none of them can be restored into this run."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (full disk, no permission)."""


def _free_space(directory: epath.Path) -> str:
    """'1.2 MiB free' on the file system holding ``directory`` (local paths)."""
    path = os.fspath(directory)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = float(shutil.disk_usage(path).free)
    except OSError:
        return "free space unknown"
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while free >= 1024 and len(units) > 1:
        free /= 1024
        units.pop(0)
    return f"{free:.0f} bytes free" if units[0] == "bytes" else f"{free:.1f} {units[0]} free"


def _save_problem(err: BaseException) -> str | None:
    """'no space left on device' / 'no permission to write' when ``err`` is one of those, else None."""
    codes = {getattr(e, "errno", None) for e in (err, err.__cause__, err.__context__) if e is not None}
    text = str(err)
    if codes & {errno.ENOSPC, errno.EDQUOT} or any(s in text for s in _DISK_FULL):
        return "no space left on device"
    if codes & {errno.EACCES, errno.EROFS, errno.EPERM} or any(s in text for s in _NOT_WRITABLE):
        return "no permission to write"
    return None


_previous_unraisablehook = None


def _drop_closed_loop_noise(unraisable) -> None:
    """Orbax's tensorstore callbacks land on a closed asyncio loop after a failed write; say nothing."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return
    (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


class _DropUnretrievedWriteFailures(logging.Filter):
    """Drops asyncio's "exception was never retrieved" report of a write that failed for a full or read-only disk.

    A failed Orbax write fails several of tensorstore's futures; the save raises one of them (reported as
    one CheckpointSaveError) and asyncio logs the others whenever they are garbage-collected, which can be
    after the save has ended. Any other unretrieved exception is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        unretrieved = "exception was never retrieved" in str(record.msg)
        return not (unretrieved and exc is not None and _save_problem(exc) is not None)


_UNRETRIEVED_FILTER = _DropUnretrievedWriteFailures()


def _install_noise_filter() -> None:
    """Installs, once per process, the filters of a failed write's leftovers: closed loop, unretrieved futures."""
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_closed_loop_noise:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop_noise
    asyncio_logger = logging.getLogger("asyncio")
    if _UNRETRIEVED_FILTER not in asyncio_logger.filters:
        asyncio_logger.addFilter(_UNRETRIEVED_FILTER)


class _Held(logging.Filter):
    """Holds back log records (Orbax logs each failed write from several threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


class Checkpointer:
    """Save and restore ``(state, input_state)`` pairs under ``directory`` for run ``run_id``.

    ``run_id=None``: every checkpoint in the directory counts as this run's (a directory owned by one
    caller, e.g. the best-on-validation slot). ``asynchronous=True`` (the trainer's) writes in the
    background; otherwise every save is complete when it returns. Every query (steps, restore) first
    waits for the save in flight.
    """

    def __init__(self, directory: str | epath.PathLike, max_to_keep: int = 3, run_id: str | None = None, *,
                 asynchronous: bool = False) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = as_path(directory)
        self.max_to_keep = max_to_keep
        self.run_id = run_id
        # Pruning is done here (only this run's checkpoints); Orbax keeps everything. Temporary directories
        # are not cleaned up on opening: another process may be writing one (remove_unfinished does it).
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._in_flight: int | None = None  # the step whose save has not been waited for
        self._held: _Held | None = None  # Orbax's log records while that save runs
        self._on_complete: list[Callable[[], None]] = []

    # -- what is on disk -------------------------------------------------------------------------
    def _steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps (after the save in flight)."""
        self.wait()
        return self._steps()

    def latest_step(self) -> int | None:
        self.wait()
        return self.manager.latest_step()

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _run_of(self, step: int) -> str | None:
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**{RUN_ITEM: ocp.args.JsonRestore()}))
        except Exception:  # noqa: BLE001 - saved without one, or damaged: owner unknown
            return None
        return (restored[RUN_ITEM] or {}).get("run_id")

    def run_of(self, step: int) -> str | None:
        """The id of the run that wrote ``step`` (None: a checkpoint saved without one)."""
        self.wait()
        return self._run_of(step)

    def _own_steps(self) -> list[int]:
        steps = self._steps()
        return steps if self.run_id is None else [s for s in steps if self._run_of(s) == self.run_id]

    def own_steps(self) -> list[int]:
        """The steps this run wrote (every step when the checkpointer has no run id)."""
        self.wait()
        return self._own_steps()

    def remove_unfinished(self) -> list[str]:
        """Deletes the temporary directories of saves that never completed (a process killed while writing);
        only the one process that writes here may call it (the trainer, holding the workdir's lock)."""
        self.wait()
        removed = []
        for child in self.directory.glob("*.orbax-checkpoint-tmp*"):
            with contextlib.suppress(OSError):
                child.rmtree()
                removed.append(child.name)
        return removed

    def in_flight(self) -> int | None:
        """The step whose files are still being written in the background, or None."""
        writing = getattr(self.manager, "is_saving_in_progress", lambda: True)  # older Orbax: assume it is
        return self._in_flight if self._in_flight is not None and writing() else None

    # -- saving ------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, input_state: dict | None = None, *, wait: bool = False,
             on_complete: Callable[[], None] | None = None) -> epath.Path:
        """Starts writing step ``step`` (an existing step is left as it is) and returns its path.

        ``state``: a pytree of global ``jax.Array`` s (or host arrays), saved as it is. The call returns
        once the arrays are on the host; the files are written in the background (``wait=True``: before
        it returns). Raises CheckpointSaveError for this save or for the one before it, which it first
        waits for. Once complete, this run's oldest checkpoints are pruned and ``on_complete`` runs.
        """
        self.wait()
        if step in self.manager.all_steps():
            return self.path(step)
        items = {"state": ocp.args.StandardSave(state), "input": ocp.args.JsonSave(input_state or {})}
        if self.run_id is not None:
            items[RUN_ITEM] = ocp.args.JsonSave({"run_id": self.run_id})
        _install_noise_filter()
        self._held = _Held()
        logging.getLogger("absl").addFilter(self._held)
        self._in_flight = step
        self._on_complete = [on_complete] if on_complete is not None else []
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as err:
            self._finish(err)
        if wait:
            self.wait()
        return self.path(step)

    def wait(self) -> None:
        """Waits until the save in flight is complete (no-op without one), then prunes; CheckpointSaveError
        (path, free space, the last complete checkpoint) if its background write failed."""
        if self._in_flight is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            self._finish(err)
        self._finish(None)

    def _finish(self, err: BaseException | None) -> None:
        """Ends the save in flight: replays Orbax's logs (dropped when ``err`` is a disk error), prunes and runs
        the completion work on success, raises CheckpointSaveError (or ``err`` itself) on failure."""
        step, held, callbacks = self._in_flight, self._held, self._on_complete
        self._in_flight, self._held, self._on_complete = None, None, []
        absl = logging.getLogger("absl")
        if held is not None:
            absl.removeFilter(held)
        problem = None if err is None else _save_problem(err)
        if problem is None and held is not None:
            for record in held.records:
                absl.handle(record)
        if err is not None and problem is None:
            raise err
        if err is not None:
            self._remove_partial(step)
            kept = [s for s in self._steps() if s != step]
            last = f"the last complete checkpoint is {self.path(kept[-1])}" if kept else "no checkpoint is kept yet"
            raise CheckpointSaveError(
                f"could not save the checkpoint of step {step} to {self.path(step)}: {problem} "
                f"({_free_space(self.directory)} there); {last}. Free some space (or fix the permissions) "
                "and start the same command again: it resumes from the last complete checkpoint") from err
        self.prune()
        for callback in callbacks:
            callback()

    def _remove_partial(self, step: int) -> None:
        """Removes what a failed save of ``step`` left (Orbax's writer threads may still be finishing)."""
        for _ in range(10):
            left = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            if not left:
                return
            for child in left:
                with contextlib.suppress(OSError):
                    child.rmtree()
            time.sleep(0.1)

    def prune(self) -> None:
        """Deletes this run's checkpoints beyond the newest ``max_to_keep``; never another run's."""
        self.manager.reload()  # steps other writers completed since this manager listed the directory
        for old in self._own_steps()[:-self.max_to_keep]:
            self.manager.delete(old)

    # -- restoring ---------------------------------------------------------------------------------
    def _target(self, template: Any, step: int) -> Any:
        """The restore target: ``template``, or for None the saved tree on this process's first device."""
        if template is not None:
            return template
        saved = ocp.StandardCheckpointHandler().metadata(self.path(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                      getattr(saved, "tree", saved),
                                      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
        """This run's newest readable checkpoint (or ``step``) as ``(state, input_state, step)``.

        ``template``: the state's structure and where its arrays go: ``jax.ShapeDtypeStruct`` leaves with a
        ``sharding`` (a checkpoint of any device count restores into it), concrete arrays, or None (the
        saved structure, on one local device). None when there is no checkpoint at all;
        UnrestorableCheckpointsError when there are some and none can be restored (each with its reason).
        """
        self.wait()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        reasons: list[str] = []
        for candidate in steps:
            owner = self._run_of(candidate)
            if self.run_id is not None and owner is not None and owner != self.run_id:
                reasons.append(f"{self.path(candidate)}: written by another run ({owner}, this is {self.run_id})")
                continue
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(self._target(template, candidate)), input=ocp.args.JsonRestore()))
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back
                reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                reasons.append(f"{self.path(candidate)}: {reason}")
                message = f"checkpoint {self.path(candidate)} could not be restored ({reason}); trying the previous one"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
                continue
            return restored["state"], dict(restored["input"] or {}), candidate
        if not reasons:
            return None
        raise UnrestorableCheckpointsError(
            f"{len(reasons)} checkpoint(s) in {self.directory}, none can be restored into this run:\n    "
            + "\n    ".join(reasons) + "\nNothing was changed. If they belong to another config, start this one in a "
            "new workdir (--workdir); if they are damaged, move them out of the way to start afresh")

    def delete(self, step: int) -> None:
        """Removes the checkpoint of ``step``."""
        self.wait()
        self.manager.delete(step)

    def read_input_state(self, step: int) -> dict:
        """The JSON item saved with ``step`` (the input position, or other small metadata), without the state."""
        self.wait()
        restored = self.manager.restore(step, args=ocp.args.Composite(input=ocp.args.JsonRestore()))
        return dict(restored["input"] or {})

    def close(self) -> None:
        """Waits for the save in flight (raising its error), then closes the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()
