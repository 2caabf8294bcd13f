"""The best state so far by a validation score, kept on disk together with its score.

The score is saved inside the checkpoint (its JSON item), so a run restarted from a
training checkpoint compares new evaluations against the best one it had already
kept, instead of replacing it with the first evaluation after the restart. The new
best is written before the old one is deleted, so a failed save never loses it (with
asynchronous saves, the old one goes only once the new one is complete). With a ``run_id``,
only that run's checkpoints are considered and deleted.
"""

from __future__ import annotations

import math
from typing import Any

from etils import epath

from ib_attention_jax.training.checkpoint import Checkpointer


class BestCheckpoint:
    """Keeps the state with the highest ``metric`` offered so far under ``directory``."""

    def __init__(self, directory: str | epath.PathLike, metric: str, run_id: str | None = None, *,
                 asynchronous: bool = False) -> None:
        # Two slots: the new best is complete on disk before the previous one goes.
        self.checkpointer = Checkpointer(directory, max_to_keep=2, run_id=run_id, asynchronous=asynchronous)
        self.metric = metric
        own = self.checkpointer.own_steps()
        self.step: int | None = own[-1] if own else None
        self.score: float | None = None
        if self.step is not None:
            saved = self.checkpointer.read_input_state(self.step).get(metric)
            # A checkpoint kept without its score (older runs) counts as beaten by any new evaluation.
            self.score = -math.inf if saved is None else float(saved)

    def offer(self, step: int, score: float, state: Any) -> bool:
        """Saves ``state`` if ``score`` beats the kept one (ties keep the earlier step); True if it did.

        ``state`` is saved as it is (global arrays: no host copy); with ``asynchronous=True`` in the
        background, and the previous best is deleted once the new one is complete (at the next offer,
        restore, ``wait`` or close)."""
        if not math.isfinite(score):
            return False
        if self.score is not None and score <= self.score:
            return False

        def drop_the_others() -> None:
            for old in self.checkpointer._own_steps():
                if old != step:
                    self.checkpointer.manager.delete(old)

        self.checkpointer.save(step, state, {self.metric: float(score)}, on_complete=drop_the_others)
        self.step, self.score = step, float(score)
        return True

    def wait(self) -> None:
        """Waits until the last offered state is written (and the one it replaced deleted)."""
        self.checkpointer.wait()

    def restore(self, template: Any) -> tuple[Any, int, float]:
        """``(state, step, score)`` of the kept best; raises if nothing was kept. ``template`` as for
        :meth:`Checkpointer.restore` (abstract arrays with shardings restore into the runner's layout)."""
        restored = self.checkpointer.restore(template, self.step)
        if restored is None or self.score is None:
            raise FileNotFoundError(f"no best-{self.metric} checkpoint under {self.checkpointer.directory}")
        state, _, step = restored
        return state, step, self.score

    def close(self) -> None:
        self.checkpointer.close()
