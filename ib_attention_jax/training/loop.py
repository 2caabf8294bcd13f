"""``train_and_evaluate(config, workdir)``: the training loop behind ``experiments/main.py``.

One loop for every config: check the config against the workdir's own (``training/workdir.py``: a
config that would mix two runs is refused before anything is written) and lock the workdir, build the
model and the optimiser, restore this run's newest readable checkpoint (state and input position) or
start fresh, run the compiled per-device step over all devices, log metrics one step late (the device
never waits for the host), save periodically (in the background: training goes on while Orbax writes the
sharded state), on SIGTERM or Ctrl-C and at the end (these wait until the checkpoint is complete), stop on
a non-finite loss, then evaluate and write ``summary.json``.

Stopping is agreed by all hosts: a signal on any host enters the next train step as that host's stop
request, the step returns the largest request over all devices, and every host reads it with the same
step's metrics, so all of them save the same step and exit 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ib_attention_jax import data as data_lib
from ib_attention_jax.configs import schema
from ib_attention_jax.data.prepare import ensure_embedded
from ib_attention_jax.errors import UserError
from ib_attention_jax.evaluation.evaluate import EvalResult, attention_metrics_options, evaluate
from ib_attention_jax.evaluation.overlays import denormalize, examples_grid, save_attention_grid
from ib_attention_jax.evaluation.step import make_eval_step
from ib_attention_jax.models.registry import create_model, get_spec
from ib_attention_jax.objectives import ObjectiveConfig
from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.parallel import AXIS, STOP, Runner, host_batch_index, train_feed
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.metrics import MetricWriter, Progress, drop_rows_after
from ib_attention_jax.training.optimizers import OptimizerConfig, make_optimizer
from ib_attention_jax.training.remat import with_remat
from ib_attention_jax.training.selection import BestCheckpoint
from ib_attention_jax.training.state import TrainState
from ib_attention_jax.training.step import StepConfig, make_train_step
from ib_attention_jax.training.workdir import Run, open_run

log = logging.getLogger(__name__)
KILL_AFTER_STEP_ENV = "IB_ATTENTION_FAULT_KILL_AFTER_STEP"  # fault injection: SIGKILL once that checkpoint is complete
KILL_DURING_SAVE_ENV = "IB_ATTENTION_FAULT_KILL_DURING_SAVE"  # SIGKILL while that step's checkpoint is being written


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the parts and the checkpoint kept."""


def _objective(config: ml_collections.ConfigDict) -> ObjectiveConfig:
    fields = dict(config.objective)
    if fields.get("info_factor") is None:
        fields["info_factor"] = get_spec(config.model).info_factor
    return ObjectiveConfig(**fields)


def _optimizer_config(config: ml_collections.ConfigDict) -> OptimizerConfig:
    fields = dict(config.optimizer)
    for key in ("milestones",):
        if key in fields:
            fields[key] = tuple(fields[key])
    return OptimizerConfig(**fields)


def build_model(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = AXIS):
    """The config's model; ``half_precision`` computes in bfloat16 with float32 parameters, ``remat``
    recomputes the backbone blocks' activations in the backward pass (``training/remat.py``)."""
    kwargs = dict(config.get("model_kwargs", {}) or {})
    if config.get("half_precision", False):
        kwargs["dtype"] = jnp.bfloat16
    model = create_model(config.model, num_classes, bn_axis_name=axis_name, **kwargs)
    return with_remat(model, config.get("remat", "none"))


class _StopFlag:
    """Set by SIGTERM or the first Ctrl-C (SIGINT): this host asks every host to save a checkpoint and exit
    (:attr:`signal_number` goes into the next train step). A second Ctrl-C aborts at once
    (KeyboardInterrupt), saving nothing more."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.signal_number = 0  # what this host asks the others: 0, or the signal it received
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                break
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.signal_number = max(self.signal_number, int(signum))
        if signum == signal.SIGINT:
            print("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to abort at once)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _host_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def _agreed_stop(metrics: dict[str, np.ndarray]) -> str:
    """The signal every host agreed to stop on (the largest any host received), or ''."""
    number = int(metrics.pop(STOP, 0))
    return signal.Signals(number).name if number else ""


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before the first step."""

    info: data_lib.DatasetInfo
    model: Any
    tx: Any
    schedule: Any
    step_config: StepConfig
    state: TrainState  # freshly initialised (the restore template)
    eval_key: jax.Array
    image_size: int
    steps_per_epoch: int
    total_steps: int
    host_batch: int
    host_eval_batch: int
    init_report: Any = None  # what config.init_from loaded (interop.LoadReport), or None


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Dataset info, model, optimiser and the initial state of ``config`` (checked before anything is built)."""
    schema.check_config(config)
    n_hosts = jax.process_count()
    schema.check_device_layout(config, n_hosts, jax.device_count())
    info = data_lib.dataset_info(config.dataset, config.get("data_dir"), train_split=config.get("train_split"),
                                 eval_split=config.get("eval_split"))
    num_classes = config.get("num_classes") or info.num_classes
    image_size = int(schema.resolved_model_kwargs(config).get("image_size", get_spec(config.model).image_size))
    steps_per_epoch = data_lib.get_recipe(config.dataset).steps_per_epoch(info.num_train_examples, config.batch_size)
    total_steps = int(config.get("num_steps") or round(config.num_epochs * steps_per_epoch))
    model = build_model(config, num_classes)
    tx, schedule = make_optimizer(_optimizer_config(config), steps_per_epoch, total_steps)
    step_config = StepConfig(objective=_objective(config), num_samples=config.get("num_samples", 1),
                             beta_warmup_steps=config.get("beta_warmup_steps", 0),
                             ema_decay=config.get("ema_decay", 0.0),
                             eval_num_samples=config.get("eval_num_samples", 4))
    init_key, state_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    variables, ema_start, init_report = initial_variables(config, model, image_size, init_key)
    state = TrainState.create(variables, tx, state_key, ema=step_config.ema_decay > 0)
    if ema_start is not None and state.ema is not None:  # a source with EMA weights (CUB net_ema, a run's EMA)
        state = state.replace(ema=ema_start)
    return Experiment(info, model, tx, schedule, step_config, state, eval_key, image_size, steps_per_epoch,
                      total_steps, config.batch_size // n_hosts, config.eval_batch_size // n_hosts, init_report)


def init_variables(model, image_size: int, init_key: jax.Array) -> dict[str, Any]:
    """The model's random initialisation (params and batch statistics)."""
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, image_size, image_size, 3)), deterministic=True))(init_key)


def initial_variables(config: ml_collections.ConfigDict, model, image_size: int, init_key: jax.Array):
    """``(variables, ema variables or None, load report or None)``: the model's initialisation, with the
    weights of ``config.init_from`` (an official or torchvision file, or another run) loaded over it."""
    variables = init_variables(model, image_size, init_key)
    if not config.get("init_from"):
        return variables, None, None
    from ib_attention_jax.interop.init_from import load_init_weights_and_ema

    return load_init_weights_and_ema(config.init_from, model, variables)


def normalization_constants(config: ml_collections.ConfigDict):
    """(mean, std) the config's images were normalised with."""
    name = config.get("normalization") or data_lib.get_recipe(config.dataset).normalization
    return data_lib.NORMALIZATIONS[name]


def eval_batches(config: ml_collections.ConfigDict, exp: Experiment, split: str):
    """One padded, masked pass over ``split`` with this host's part of the eval batch."""
    return data_lib.make_eval_iterator(config.dataset, batch_size=exp.host_eval_batch, data_dir=config.get("data_dir"),
                                       split=split, normalization=config.get("normalization"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming the run that is there) and returns the summary.

    Raises ConfigError / ConfigMismatchError (nothing written) when the config is invalid or belongs to
    another run than the workdir's, WorkdirLockedError when another run trains there.
    """
    t_start = time.time()
    schema.check_config(config)
    initialize_distributed(config)
    is_main = jax.process_index() == 0
    with open_run(config, workdir, train=True, is_main=is_main) as run:
        return _train(run, is_main, t_start)


def _train(run: Run, is_main: bool, t_start: float) -> dict[str, Any]:
    config, workdir = run.config, run.workdir
    if is_main and (report := run.describe_changes()):
        print(report, flush=True)
    ensure_embedded(config.dataset, config.get("data_dir"))
    exp = build_experiment(config)
    info, model, tx, schedule, state = exp.info, exp.model, exp.tx, exp.schedule, exp.state
    total_steps, host_batch = exp.total_steps, exp.host_batch

    runner = Runner(config.get("parallel", "shard_map"))
    checkpointer = Checkpointer(workdir / "checkpoints", config.get("keep_checkpoints", 3), run_id=run.run_id,
                                asynchronous=True)
    if is_main and (unfinished := checkpointer.remove_unfinished()):
        log.info("removed the unfinished checkpoint writes %s", unfinished)
    restored = checkpointer.restore(runner.abstract_state(state))  # into the mesh's layout, on any device count
    input_state: dict = {}
    pstate, start_step = None, int(state.step)
    if restored is not None:
        _, input_state, start_step = restored
        pstate = runner.from_checkpoint(restored[0])
        log.info("restored checkpoint at step %d", start_step)
    elif exp.init_report is not None and is_main:
        print(exp.init_report.format(), flush=True)
    run.record()  # the config is the workdir's from now on
    if is_main:  # rows past the restored step are computed again; a finished run evaluates again
        drop_rows_after(workdir, start_step, ("eval", "validation") if start_step >= total_steps else ())

    train_iter = data_lib.make_train_iterator(
        config.dataset, batch_size=host_batch, seed=config.seed, data_dir=config.get("data_dir"),
        split=info.train_split, num_workers=config.get("num_workers", 0), normalization=config.get("normalization"))
    if input_state:
        train_iter.set_state(input_state)

    train_step = runner.compile_train_step(make_train_step(model, tx, exp.step_config, axis_name=AXIS))
    eval_step = runner.compile_eval_step(make_eval_step(model, exp.step_config, exp.eval_key,
                                                        use_ema=config.get("eval_ema", False)))
    writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", False), enabled=is_main)
    if run.changes:
        writer.write(start_step, "config_change", {"changes": run.change_record()})
    progress = Progress(total_steps, start_step, config.batch_size, enabled=is_main and config.get("progress", True))
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
    kill_during_save = int(os.environ.get(KILL_DURING_SAVE_ENV, "0") or 0)
    log_every = config.get("log_every_steps", 50)
    ckpt_every = config.get("checkpoint_every_steps", 0) or total_steps
    index = host_batch_index(host_batch)

    def save(step: int, pstate, wait: bool = False):
        """The state as the global arrays it is (no host copy); ``wait``: until the checkpoint is complete."""
        return checkpointer.save(step, runner.checkpoint_view(pstate), train_iter.get_state(), wait=wait)

    def check_finite(step: int, metrics: dict[str, np.ndarray]) -> None:
        if not np.isfinite(metrics["total"]):
            parts = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != STOP}
            kept = checkpointer.latest_step()
            where = checkpointer.path(kept) if kept is not None else "none saved yet"
            raise NonFiniteLossError(f"non-finite loss at step {step}: parts {parts}; last good checkpoint: {where}")

    eval_every = config.get("eval_every_steps", 0)
    if config.get("validation_split") and not eval_every:
        eval_every = exp.steps_per_epoch
    selector = _ModelSelector(config, exp, runner, eval_step, writer, workdir, run.run_id)
    if pstate is None:
        pstate = runner.replicate(state)
    del state, restored  # the loop holds the state only as pstate, whose buffers each step donates
    pending: tuple[int, dict] | None = None
    step = start_step
    stopped_by = ""
    try:
        with _StopFlag() as stop:
            while step < total_steps:
                batch = next(train_iter)
                feed = runner.shard_batch(train_feed(batch["image"], batch["label"], index), stop=stop.signal_number)
                pstate, metrics = train_step(pstate, feed)
                step += 1
                if pending is not None:  # step t-1's metrics, fetched after step t is dispatched
                    prev_step, prev = pending
                    prev = _host_metrics(prev)
                    stopped_by = _agreed_stop(prev)  # the same on every host: all stop after step t
                    check_finite(prev_step, prev)
                    if prev_step % log_every == 0 or prev_step == start_step + 1:
                        scalars = {k: v for k, v in prev.items() if np.ndim(v) == 0}
                        scalars["learning_rate"] = float(schedule(prev_step - 1))
                        scalars["images_per_second"] = progress.images_per_second
                        writer.write(prev_step, "train", {**scalars, **({"anchor_usage": prev["anchor_usage"]}
                                                                         if "anchor_usage" in prev else {})})
                    progress.update(prev_step, {k: float(prev[k]) for k in ("total", "accuracy") if k in prev})
                pending = (step, metrics)
                if eval_every and step % eval_every == 0 and step < total_steps:
                    selector.periodic_eval(step, pstate)
                if step % ckpt_every == 0 and step < total_steps:
                    check_finite(step, _host_metrics(metrics))
                    save(step, pstate, wait=bool(kill_after and step >= kill_after))
                    if kill_after and step >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if kill_during_save and step >= kill_during_save:
                        _kill_while_writing(checkpointer, step)
                if stopped_by:
                    break
        if pending is not None:
            last = _host_metrics(pending[1])
            stopped_by = stopped_by or _agreed_stop(last)  # a stop asked during the last step
            check_finite(pending[0], last)
        if step > start_step or checkpointer.latest_step() is None:
            save(step, pstate, wait=True)
        progress.close()
        if stopped_by:
            writer.write(step, "preempted", {"checkpoint": 1.0, "signal": stopped_by})
            writer.close()
            selector.close()
            checkpointer.close()
            here = "" if stop.requested else " (received by another host)"
            print(f"{stopped_by}{here}: saved the checkpoint of step {step} to {checkpointer.path(step)} and "
                  "stopped; the same command continues the run", file=sys.stderr, flush=True)
            return {"stopped_at_step": step, "signal": stopped_by, "checkpoint": str(checkpointer.path(step))}
    except BaseException:
        _close_quietly(selector.close, checkpointer.close)  # the error that stopped the run is the one reported
        raise

    try:
        final_state, selected = selector.final_state(step, pstate)
    finally:
        selector.close()
    result = evaluate(runner, eval_step, final_state, eval_batches(config, exp, info.eval_split),
                      exp.image_size, keep_examples=config.get("export_examples", 32),
                      attention_metrics=attention_metrics_options(config, model))
    writer.write(step, "eval", result.metrics)
    writer.write_image(step, "eval/attention_overlays",
                       examples_grid(result.examples, *normalization_constants(config)))
    summary = _summary(config, info, result, step, t_start, progress.images_per_second, checkpointer)
    summary.update(selected)
    if is_main:
        _write_outputs(workdir, config, result, summary)
    writer.close()
    checkpointer.close()
    return summary


class _ModelSelector:
    """Periodic evaluation; with a validation split, keeps the best-on-validation state for the test.

    Without ``validation_split`` the final state is tested (never the best on test).
    """

    def __init__(self, config, exp: Experiment, runner: Runner, eval_step, writer: MetricWriter,
                 workdir, run_id: str | None = None) -> None:
        self.config, self.exp, self.runner, self.eval_step, self.writer = config, exp, runner, eval_step, writer
        self.split = config.get("validation_split")
        self.best = (BestCheckpoint(workdir / "best_on_validation", "accuracy_mc", run_id=run_id, asynchronous=True)
                     if self.split else None)

    def periodic_eval(self, step: int, pstate) -> None:
        split = self.split or self.exp.info.eval_split
        result = evaluate(self.runner, self.eval_step, pstate, eval_batches(self.config, self.exp, split),
                          self.exp.image_size)
        self.writer.write(step, "validation" if self.split else "eval", result.metrics)
        if self.best is not None:
            self.best.offer(step, float(result.metrics["accuracy_mc"]), self.runner.checkpoint_view(pstate))

    def final_state(self, step: int, pstate):
        """The state to test and what was selected."""
        if not self.split:
            return pstate, {}
        self.periodic_eval(step, pstate)
        state, best_step, best_score = self.best.restore(self.runner.abstract_state(self.exp.state))
        return self.runner.from_checkpoint(state), {"selected_step": best_step, "validation_split": self.split,
                                                    "validation_accuracy_mc": best_score}

    def close(self) -> None:
        """Waits for the best state's save in flight (raising its error)."""
        if self.best is not None:
            self.best.close()


def _kill_while_writing(checkpointer: Checkpointer, step: int) -> None:
    """Fault injection: SIGKILL this process while the checkpoint of ``step`` is written in the background."""
    writing = checkpointer.in_flight() == step
    print(f"fault injection: SIGKILL {'while' if writing else 'after'} the checkpoint of step {step} "
          f"{'is being written' if writing else 'was written'}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _close_quietly(*closers) -> None:
    """Runs each closer; an error it raises is logged, not raised (another error is already on its way)."""
    for close in closers:
        try:
            close()
        except Exception as err:  # noqa: BLE001
            log.error("while stopping on an error: %s", err)


def _summary(config, info, result: EvalResult, step: int, t_start: float, images_per_second: float,
             checkpointer: Checkpointer) -> dict[str, Any]:
    m = result.metrics
    summary = {"model": config.model, "dataset": config.dataset, "eval_split": info.eval_split, "steps": step,
               "test_accuracy_mc": m["accuracy_mc"], "test_accuracy_mean": m["accuracy_mean"],
               "test_ce_mean": m["ce_mean"], "num_eval_examples": m["num_examples"],
               "train_images_per_second": images_per_second, "devices": jax.device_count(),
               "checkpoint": str(checkpointer.path(step)), "wall_seconds": time.time() - t_start}
    summary.update(result.summary_entries())  # localisation, deletion/insertion, anchor usage
    return _plain(summary)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, for JSON (sums over hosts come
    back from ``process_allgather`` as float32 scalars)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


def _write_outputs(workdir, config, result: EvalResult, summary: dict) -> None:
    ex = result.examples
    if "attention" in ex and len(ex["image"]):
        mean, std = normalization_constants(config)
        path = save_attention_grid(workdir / "attention_overlays.png", denormalize(ex["image"], mean, std),
                                   ex["attention"], labels=ex["label"], predictions=ex["pred_mc"],
                                   quantized_maps=ex.get("attention_q"), boxes=ex.get("box"))
        summary["attention_overlays"] = str(path)
    atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
