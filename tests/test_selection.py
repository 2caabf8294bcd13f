"""Best-on-validation selection: the kept state and its score survive a restart, and nothing is lost on the way."""

import math

import numpy as np

from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.selection import BestCheckpoint


def _state(value: float) -> dict:
    return {"w": np.full((3,), value, np.float32), "step": np.asarray(0, np.int32)}


def test_keeps_the_highest_score_and_only_its_checkpoint(tmp_path):
    best = BestCheckpoint(tmp_path / "best", "accuracy")
    assert best.offer(10, 0.5, _state(1.0))
    assert not best.offer(20, 0.4, _state(2.0))  # worse
    assert not best.offer(30, 0.5, _state(3.0))  # a tie keeps the earlier step
    assert not best.offer(40, math.nan, _state(4.0))
    assert best.offer(50, 0.7, _state(5.0))
    assert best.checkpointer.all_steps() == [50]
    state, step, score = best.restore(_state(0.0))
    assert (step, score) == (50, 0.7)
    np.testing.assert_array_equal(state["w"], np.full((3,), 5.0, np.float32))


def test_a_restarted_run_compares_against_the_kept_score(tmp_path):
    first = BestCheckpoint(tmp_path / "best", "accuracy")
    first.offer(100, 0.8, _state(1.0))
    first.close()

    resumed = BestCheckpoint(tmp_path / "best", "accuracy")
    assert (resumed.step, resumed.score) == (100, 0.8)
    assert not resumed.offer(120, 0.6, _state(2.0))  # the first evaluation after the restart is worse
    state, step, score = resumed.restore(_state(0.0))
    assert (step, score) == (100, 0.8)
    np.testing.assert_array_equal(state["w"], np.full((3,), 1.0, np.float32))

    # A better state at an earlier step (a run resumed from an older training checkpoint) replaces it.
    assert resumed.offer(90, 0.9, _state(3.0))
    assert resumed.checkpointer.all_steps() == [90]
    assert resumed.restore(_state(0.0))[1:] == (90, 0.9)


def test_a_kept_checkpoint_without_a_score_is_beaten_by_any_evaluation(tmp_path):
    old = Checkpointer(tmp_path / "best", 1)
    old.save(7, _state(1.0))
    old.close()
    best = BestCheckpoint(tmp_path / "best", "accuracy")
    assert best.score == -math.inf and best.step == 7
    assert best.offer(8, 0.1, _state(2.0))
    assert best.checkpointer.all_steps() == [8]
