"""Orbax checkpoints of the whole training state and the input position, tagged with the run they belong to.

A checkpoint holds the TrainState (params, batch stats, optimiser state, EMA, step, RNG key), the input
iterator's state and the id of the run that wrote it, so a restored run continues the same trajectory.
Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save
never replaces a good checkpoint.

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
from collections.abc import Iterator
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from ib_attention_jax.errors import UserError
from ib_attention_jax.training.paths import as_path

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


def _install_noise_filter() -> None:
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_closed_loop_noise:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop_noise


class _Held(logging.Filter):
    """Holds back log records (Orbax logs each failed write from several threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _orbax_logs_held() -> Iterator[_Held]:
    """Orbax's log records during a save; replayed when it succeeds, dropped when the save error says all."""
    held = _Held()
    logger = logging.getLogger("absl")
    logger.addFilter(held)
    try:
        yield held
    finally:
        logger.removeFilter(held)


class Checkpointer:
    """Save and restore ``(state, input_state)`` pairs under ``directory`` for run ``run_id``.

    ``run_id=None``: every checkpoint in the directory counts as this run's (a directory owned by one
    caller, e.g. the best-on-validation slot).
    """

    def __init__(self, directory: str | epath.PathLike, max_to_keep: int = 3, run_id: str | None = None) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = as_path(directory)
        self.max_to_keep = max_to_keep
        self.run_id = run_id
        # Pruning is done here (only this run's checkpoints); Orbax keeps everything.
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def run_of(self, step: int) -> str | None:
        """The id of the run that wrote ``step`` (None: a checkpoint saved without one)."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**{RUN_ITEM: ocp.args.JsonRestore()}))
        except Exception:  # noqa: BLE001 - saved without one, or damaged: owner unknown
            return None
        return (restored[RUN_ITEM] or {}).get("run_id")

    def own_steps(self) -> list[int]:
        """The steps this run wrote (every step when the checkpointer has no run id)."""
        steps = self.all_steps()
        return steps if self.run_id is None else [s for s in steps if self.run_of(s) == self.run_id]

    def save(self, step: int, state: Any, input_state: dict | None = None) -> epath.Path:
        """Writes step ``step`` (an existing step is left as it is), then prunes this run's oldest."""
        if step in self.manager.all_steps():
            return self.path(step)
        items = {"state": ocp.args.StandardSave(state), "input": ocp.args.JsonSave(input_state or {})}
        if self.run_id is not None:
            items[RUN_ITEM] = ocp.args.JsonSave({"run_id": self.run_id})
        _install_noise_filter()
        with _orbax_logs_held() as held:
            try:
                self.manager.save(step, args=ocp.args.Composite(**items), force=True)
                self.manager.wait_until_finished()
            except Exception as err:
                problem = _save_problem(err)
                if problem is None:
                    for record in held.records:
                        logging.getLogger("absl").handle(record)
                    raise
                self._remove_partial(step)
                kept = [s for s in self.all_steps() if s != step]
                last = f"the last complete checkpoint is {self.path(kept[-1])}" if kept else "no checkpoint is kept yet"
                raise CheckpointSaveError(
                    f"could not save the checkpoint of step {step} to {self.path(step)}: {problem} "
                    f"({_free_space(self.directory)} there); {last}. Free some space (or fix the permissions) "
                    "and start the same command again: it resumes from the last complete checkpoint") from err
        for record in held.records:
            logging.getLogger("absl").handle(record)
        self.prune()
        return self.path(step)

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
        for old in self.own_steps()[:-self.max_to_keep]:
            self.manager.delete(old)

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
        """This run's newest readable checkpoint (or ``step``) as ``(state, input_state, step)``.

        None when there is no checkpoint at all; UnrestorableCheckpointsError when there are some and none
        can be restored (each listed with its reason).
        """
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        reasons: list[str] = []
        for candidate in steps:
            owner = self.run_of(candidate)
            if self.run_id is not None and owner is not None and owner != self.run_id:
                reasons.append(f"{self.path(candidate)}: written by another run ({owner}, this is {self.run_id})")
                continue
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), input=ocp.args.JsonRestore()))
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
        self.manager.delete(step)

    def read_input_state(self, step: int) -> dict:
        """The JSON item saved with ``step`` (the input position, or other small metadata), without the state."""
        restored = self.manager.restore(step, args=ocp.args.Composite(input=ocp.args.JsonRestore()))
        return dict(restored["input"] or {})

    def close(self) -> None:
        self.manager.close()
