"""Orbax checkpoints of the whole training state and the input position.

A checkpoint holds the TrainState (params, batch stats, optimiser state, EMA, step,
RNG key) and the input iterator's state, so a restored run continues the same
trajectory. Orbax writes each step into a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint; older ones are
kept up to ``max_to_keep``. A latest checkpoint that cannot be read is skipped with a
warning and the previous one is restored.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from ib_attention_jax.training.paths import as_path

log = logging.getLogger(__name__)


class Checkpointer:
    """Save and restore ``(state, input_state)`` pairs under ``directory``."""

    def __init__(self, directory: str | epath.PathLike, max_to_keep: int = 3) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, input_state: dict | None = None) -> epath.Path:
        """Writes step ``step`` (overwriting nothing: an existing step is left as it is)."""
        if step in self.manager.all_steps():
            return self.path(step)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        input=ocp.args.JsonSave(input_state or {})), force=True)
        self.manager.wait_until_finished()
        return self.path(step)

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
        """The newest readable checkpoint (or ``step``) as ``(state, input_state, step)``; None if none."""
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        for candidate in steps:
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), input=ocp.args.JsonRestore()))
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back
                message = (f"checkpoint {self.path(candidate)} could not be restored "
                           f"({type(err).__name__}: {str(err)[:200]}); trying the previous one")
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
                if step is not None:
                    raise
                continue
            return restored["state"], dict(restored["input"] or {}), candidate
        return None

    def delete(self, step: int) -> None:
        """Removes the checkpoint of ``step``."""
        self.manager.delete(step)

    def read_input_state(self, step: int) -> dict:
        """The JSON item saved with ``step`` (the input position, or other small metadata), without the state."""
        restored = self.manager.restore(step, args=ocp.args.Composite(input=ocp.args.JsonRestore()))
        return dict(restored["input"] or {})

    def close(self) -> None:
        self.manager.close()
