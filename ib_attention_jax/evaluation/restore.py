"""The trained weights of a workdir, placed for evaluation: the state its final test used.

The workdir is opened as every evaluation mode opens it (``workdir.open_run``: the config is checked and
compared with the workdir's own, which refuses weights of another run). With a validation split the run
tested its best-on-validation state, so that one is restored; otherwise the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from ib_attention_jax.data.prepare import ensure_embedded
from ib_attention_jax.errors import UserError
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import Experiment, build_experiment
from ib_attention_jax.training.parallel import Runner
from ib_attention_jax.training.selection import BestCheckpoint
from ib_attention_jax.training.workdir import open_run


class UntrainedError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint of this run."""


@dataclasses.dataclass
class RestoredRun:
    config: ml_collections.ConfigDict  # checked and resolved
    experiment: Experiment
    runner: Runner
    state: Any  # in the runner's layout
    step: int
    weights: str  # "latest" or "best_on_validation"


def restore_for_evaluation(config: ml_collections.ConfigDict, workdir: str) -> RestoredRun:
    """Builds ``config``'s experiment and restores the weights its test used; UntrainedError if there are none."""
    with open_run(config, workdir, train=False) as run:
        if report := run.describe_changes("this evaluation differs from the workdir's own config in"):
            print(report, flush=True)
        config = run.config
        ensure_embedded(config.dataset, config.get("data_dir"))
        exp = build_experiment(config)
        best_dir = run.workdir / "best_on_validation"
        restored, weights = None, "latest"
        if config.get("validation_split") and best_dir.exists():
            best = BestCheckpoint(best_dir, "accuracy_mc", run_id=run.run_id)
            try:
                state, step, _ = best.restore(exp.state)
                restored, weights = (state, {}, step), "best_on_validation"
            finally:
                best.close()
        if restored is None:
            checkpointer = Checkpointer(run.workdir / "checkpoints", config.get("keep_checkpoints", 3),
                                        run_id=run.run_id)
            try:
                restored = checkpointer.restore(exp.state)
            finally:
                checkpointer.close()
        if restored is None:
            raise UntrainedError(f"no checkpoint in {run.workdir / 'checkpoints'}; train first (--mode=train)")
        state, _, step = restored
        runner = Runner(config.get("parallel", "shard_map"))
        return RestoredRun(config, exp, runner, runner.replicate(state), step, weights)
