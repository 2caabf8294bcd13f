"""The weights an evaluation mode works on, restored from a workdir (or loaded from ``config.init_from``).

The workdir is opened as every evaluation mode opens it (``workdir.open_run``: the config is checked and
compared with the workdir's own, which refuses weights of another run, and the workdir must be writable).
:func:`restore_latest` gives the latest checkpoint (``--mode=evaluate`` and ``export_attention``: without
one, the weights ``config.init_from`` names); :func:`restore_for_evaluation` the state the run's final test
used: with a validation split its best-on-validation state, otherwise the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from ib_attention_jax.data.prepare import ensure_embedded
from ib_attention_jax.errors import UserError
from ib_attention_jax.runtime.parallel import Runner
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import Experiment, build_experiment
from ib_attention_jax.training.selection import BestCheckpoint
from ib_attention_jax.training.workdir import Run, open_run


class NoCheckpointError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint to evaluate."""


class InitWeightsError(UserError, ValueError):
    """The weights to evaluate or export do not fit the config's model."""


class UntrainedError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint of this run."""


def restore_latest(run: Run) -> tuple[Experiment, Any, int]:
    """(experiment, host state, step) of the run's latest checkpoint, or of ``config.init_from`` without one."""
    if report := run.describe_changes("this evaluation differs from the workdir's own config in"):
        print(report, flush=True)
    config = run.config
    ensure_embedded(config.dataset, config.get("data_dir"))
    exp = build_experiment(config)
    checkpointer = Checkpointer(run.workdir / "checkpoints", config.get("keep_checkpoints", 3), run_id=run.run_id)
    restored = checkpointer.restore(exp.state)
    if restored is not None:
        state, _, step = restored
        return exp, state, step
    if exp.init_report is None:
        raise NoCheckpointError(f"no checkpoint in {checkpointer.directory}; train first (--mode=train), or "
                                "evaluate other weights with --config.init_from=FILE")
    check_complete(exp.init_report, config.init_from, config.model, "evaluated")
    print(exp.init_report.format(), flush=True)
    return exp, exp.state, 0


def check_complete(report, source: Any, model: str, use: str) -> None:
    """Refuses weights that leave part of the model at its random initialisation (``use``: "evaluated", ...)."""
    if report.num_kept:
        raise InitWeightsError(
            f"{source} does not hold every tensor of {model}: "
            f"{', '.join(report.group_names('kept'))} would be {use} at their random initialisation. "
            "Check --config.model (and --config.model_kwargs) against the weights")


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
