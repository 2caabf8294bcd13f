"""Parity of two training steps with the official trainer (train-step fixtures).

A train-step fixture holds what two consecutive official training steps did to a model
filled with the manifest's synthetic weights: losses, logits, attention, gradients,
every parameter and BatchNorm buffer after each step and, for CUB, the weight EMA, once
from a float32 and once from a float64 run of the official code. This runs the same two
steps with the project's own trainer:

* the model, optimiser, learning-rate schedule, objective and EMA come from the official
  experiment's config (``configs/official.py``; the WRN models with ``dropout_rate=0``,
  as the fixtures were made), the epoch length from the dataset's recipe;
* the steps are ``training.step.make_train_step`` under ``jax.shard_map`` (one device),
  with the model on its zero-noise mean path (``deterministic=True``) in training mode
  (BatchNorm on batch statistics, updating its running statistics);
* the optimiser starts fresh (no momentum or Adam moments) with its schedule at the
  first step of epoch 30, the rate the fixture's steps used, taken from OUR schedule;
* the gradients are the ones the step handed to the optimiser (recorded by a
  pass-through transformation in front of it); logits and attention maps are those of
  the step's own forward (handed to the host by a debug callback).

The records are compared under the manifest's tolerances (``train_records``). float64
runs need ``jax_enable_x64`` (the command starts a process with it). Convolutions use a
direct form, shifted slices and one matrix multiply (``conv_impl="slices"`` by default),
as the fixtures' tolerances were calibrated with direct (GEMM) convolutions. In float32 the step-0 gradients of
the VGG fixtures depend on rounding: a few ReLU inputs lie within float32 rounding of
zero, so the form and the compile flags decide which way they go (README, "Training
parity"); float64 pins every record down whatever the form.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ib_attention_jax import data as data_lib
from ib_attention_jax.configs import official
from ib_attention_jax.interop import train_records
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.state_dict import from_state_dict, to_state_dict
from ib_attention_jax.models.registry import create_model, get_spec
from ib_attention_jax.objectives import ObjectiveConfig
from ib_attention_jax.runtime.parallel import AXIS, Runner, train_feed
from ib_attention_jax.training.optimizers import OptimizerConfig, make_optimizer
from ib_attention_jax.training.state import TrainState
from ib_attention_jax.training.step import StepConfig, make_train_step

DEFAULT_CONV_IMPL = "slices"  # a direct (GEMM) convolution, as the fixtures' tolerances were calibrated with
LR_TOL = 2.5e-7  # relative: two float32 ulps; a wrong epoch or factor is off by >= 3%
# Training-split sizes of the official datasets (the epoch length of the official loaders).
OFFICIAL_TRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "cub": 5_994}


class FixtureError(ValueError):
    """A fixture that cannot be checked (missing or altered files, a manifest this code does not know)."""


def official_dataset(manifest: Mapping[str, Any]) -> str:
    """The recipe name of the manifest's dataset ("CIFAR-10" -> cifar10, "CUB-200-2011 ..." -> cub)."""
    text = str(manifest["dataset"]).lower()
    for prefix, name in (("cifar-100", "cifar100"), ("cifar-10", "cifar10"), ("svhn", "svhn"), ("cub", "cub")):
        if text.startswith(prefix):
            return name
    raise FixtureError(f"no official experiment for dataset {manifest['dataset']!r}")


def official_config(model_name: str, dataset: str) -> ml_collections.ConfigDict:
    """The official experiment config that trains ``model_name`` on ``dataset``."""
    quantized = get_spec(model_name).quantized
    if model_name.startswith("vgg_"):
        config = official.cifar_vgg(dataset, quantized=quantized)
    elif model_name.startswith("wrn_"):
        config = official.cifar_wrn(dataset, quantized=quantized)
    elif model_name.startswith("cub_"):
        config = official.cub(model_name.split("_")[1], quantized=quantized)
    else:
        raise FixtureError(f"no official experiment config trains {model_name}")
    if config.model != model_name:
        raise FixtureError(f"the official config for {dataset} builds {config.model}, not {model_name}")
    return config


def optimizer_config(config: ml_collections.ConfigDict) -> OptimizerConfig:
    fields = dict(config.optimizer)
    fields["milestones"] = tuple(fields["milestones"])
    return OptimizerConfig(**fields)


def objective_config(config: ml_collections.ConfigDict) -> ObjectiveConfig:
    fields = dict(config.objective)
    if fields.get("info_factor") is None:
        fields["info_factor"] = get_spec(config.model).info_factor
    return ObjectiveConfig(**fields)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the official config builds: model, optimiser, schedule and step settings."""

    config: ml_collections.ConfigDict
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    anchor_lr_ratio: float
    step_config: StepConfig
    steps_per_epoch: int


def official_trainer(model_name: str, dataset: str, conv_impl: str = DEFAULT_CONV_IMPL,
                     model_kwargs: Mapping[str, Any] | None = None) -> Trainer:
    """The trainer of the official experiment, epochs counted as the official loader counts them."""
    config = official_config(model_name, dataset)
    recipe = data_lib.get_recipe(config.dataset)
    steps_per_epoch = recipe.steps_per_epoch(OFFICIAL_TRAIN_EXAMPLES[recipe.name], config.batch_size)
    total_steps = round(config.num_epochs * steps_per_epoch)
    kwargs = {**dict(config.model_kwargs), **dict(model_kwargs or {}), "conv_impl": conv_impl, "bn_axis_name": AXIS}
    model = create_model(config.model, config.get("num_classes") or recipe.num_classes, **kwargs)
    opt = optimizer_config(config)
    tx, schedule = make_optimizer(opt, steps_per_epoch, total_steps)
    step_config = StepConfig(objective=objective_config(config), num_samples=config.num_samples,
                             beta_warmup_steps=config.beta_warmup_steps, ema_decay=config.ema_decay)
    return Trainer(config, model, tx, schedule, opt.anchor_lr_ratio, step_config, steps_per_epoch)


class MeanPath:
    """``model`` on its zero-noise path: every attention and latent sample is its mean (train mode or not).

    Each call also hands the forward's logits and attention maps to the host (a
    ``jax.debug.callback``, primal values only), so the records of a train step's forward
    are that step's own, with no second forward: ``forward_records`` after the step.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.forward_records: dict[str, np.ndarray] = {}

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.model.apply(variables, *args, deterministic=True, **kwargs)
        out = result[0] if isinstance(result, tuple) else result
        jax.debug.callback(self._keep, _forward_records(out))
        return result

    def _keep(self, records: dict[str, Any]) -> None:
        self.forward_records = {k: np.asarray(v) for k, v in records.items()}


class GradientRecord(NamedTuple):
    grads: Any


def record_gradients() -> optax.GradientTransformation:
    """Passes the gradients on unchanged and keeps them in its state: what the step gave the optimiser."""

    def init(params):
        return GradientRecord(jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del state, params
        return updates, GradientRecord(updates)

    return optax.GradientTransformation(init, update)


def schedule_at(opt_state: Any, step: int) -> Any:
    """``opt_state`` with every learning-rate schedule's step counter at ``step``; moments stay fresh
    (Adam's own count too, so its bias correction starts at t = 1 as a new PyTorch optimiser's does)."""

    def move(s):
        if isinstance(s, optax.ScaleByScheduleState):
            return s._replace(count=jnp.asarray(step, s.count.dtype))
        return s

    return jax.tree_util.tree_map(move, opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))


def step_inputs(manifest: Mapping[str, Any], step: int) -> tuple[np.ndarray, np.ndarray]:
    """(NHWC float32 images, int64 labels) of a fixture step, from the manifest's recipe; the images'
    sha256 is checked against the manifest."""
    seed, (b, c, h, w) = int(manifest["seed"]), manifest["inputs"]["shape"]
    x = np.random.default_rng(seed + 2000 + step).standard_normal((b, c, h, w)).astype(np.float32)
    expected = manifest["inputs"]["sha256_of_x_bytes"][step]
    if hashlib.sha256(x.tobytes()).hexdigest() != expected:
        raise FixtureError(f"step {step}: the input recipe does not give the manifest's images (sha256 {expected})")
    y = np.roll(np.arange(b) % int(manifest["num_classes"]), step)
    return x.transpose(0, 2, 3, 1), y


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype) if jnp.issubdtype(v.dtype, jnp.floating)
                                  else jnp.asarray(v), tree)


def _official_names(model: Any, params: Any, batch_stats: Any, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    sd = to_state_dict(model, {"params": params, "batch_stats": batch_stats})
    return {name: sd[name] for name in manifest["state_entries"] if name in sd}


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """Our records of the fixture's steps and the learning rates the steps used."""

    records: dict[str, np.ndarray]
    learning_rates: list[dict[str, float]]  # per step: {"base": lr, "anchors": lr}
    steps_per_epoch: int
    start_step: int


def run_train_steps(manifest: Mapping[str, Any], model_name: str, precision: str = "float32",
                    conv_impl: str = DEFAULT_CONV_IMPL) -> TrainRun:
    """The fixture's two training steps with the official config's trainer; records under the fixture's keys."""
    dtype = jnp.dtype(precision)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise FixtureError("float64 records need jax_enable_x64 (set JAX_ENABLE_X64=1 before jax starts)")
    model_kwargs = {}
    if "dropRate" in manifest.get("constructor_args", {}):
        model_kwargs["dropout_rate"] = float(manifest["constructor_args"]["dropRate"])
    trainer = official_trainer(model_name, official_dataset(manifest), conv_impl, model_kwargs)
    _check_model(trainer.model, manifest)
    initial = state_dict_from_manifest(manifest)
    variables = _cast_floats(from_state_dict(trainer.model, initial), dtype)
    tx = optax.chain(record_gradients(), trainer.tx)
    start = int(manifest["optimizer"]["lr_epoch"]) * trainer.steps_per_epoch
    state = TrainState.create(variables, tx, jax.random.PRNGKey(0), ema=trainer.step_config.ema_decay > 0)
    state = state.replace(step=jnp.asarray(start, jnp.int32), opt_state=schedule_at(state.opt_state, start))
    runner = Runner("shard_map", jax.devices()[:1])
    model = MeanPath(trainer.model)
    train_step = runner.compile_train_step(make_train_step(model, tx, trainer.step_config))
    pstate, records, rates = runner.replicate(state), {}, []
    for s in range(int(manifest["num_steps"])):
        x, y = step_inputs(manifest, s)
        x = x.astype(dtype)
        batch = runner.shard_batch(train_feed(x, y, np.arange(x.shape[0], dtype=np.int32)))
        rates.append({"base": float(trainer.schedule(start + s)),
                      "anchors": trainer.anchor_lr_ratio * float(trainer.schedule(start + s))})
        pstate, metrics = train_step(pstate, batch)
        jax.effects_barrier()  # the step's forward records have reached the host
        records.update({f"step{s}/{k}": v for k, v in model.forward_records.items()})
        after = runner.unreplicate(pstate)
        metrics = jax.device_get(metrics)
        prefix = f"step{s}/"
        for ours, theirs in (("class_loss", "class_loss"), ("info_loss", "info_loss"), ("kl", "kl"),
                             ("total", "total_loss"), ("vq_loss", "vq_loss"), ("commit_loss", "commit_loss"),
                             ("qt_loss", "qt_loss")):
            if ours in metrics:
                records[prefix + theirs] = np.asarray(metrics[ours])
        grads = _official_names(trainer.model, after.opt_state[0].grads, after.batch_stats, manifest)
        records.update(train_records.compress(grads, manifest, prefix, "grad"))
        state_after = _official_names(trainer.model, after.params, after.batch_stats, manifest)
        records.update(train_records.compress(state_after, manifest, prefix, "after", initial))
        if after.ema is not None:
            ema = _official_names(trainer.model, after.ema["params"], after.ema["batch_stats"], manifest)
            records.update(train_records.compress(ema, manifest, prefix, "ema", initial))
    return TrainRun(records, rates, trainer.steps_per_epoch, start)


def _forward_records(out: Any) -> dict[str, jax.Array]:
    """The forward records of a model output: logits (b, classes), attention mean (b, h, w, 1) and,
    with anchors, the quantiser's input (b, h, w, 1) and the anchor indices (b, h, w)."""
    records = {"logits": out.logits, "att_mu_nhwc": out.attention.mean}
    if out.quantizer is not None:
        records["att_in_nhwc"] = out.attention.samples[0]
        records["att_q_index"] = out.quantizer.index[0, ..., 0]
    return records


def _check_model(model: Any, manifest: Mapping[str, Any]) -> None:
    """The config's model has the fixture's latent size and anchor count."""
    if getattr(model, "latent_dim", None) != int(manifest["latent_dim_K"]):
        raise FixtureError(f"the official config builds K = {model.latent_dim}, the fixture has "
                           f"{manifest['latent_dim_K']}")
    anchors = int(manifest.get("constructor_args", {}).get("qt_num") or 0)
    if getattr(model, "num_anchors", 0) != anchors:
        raise FixtureError(f"the official config builds {model.num_anchors} anchors, the fixture has {anchors}")


def learning_rate_result(manifest: Mapping[str, Any], run: TrainRun) -> train_records.ClassResult:
    """Our rates at the fixture's steps against the official optimiser's param groups (relative error).

    The anchors' official rate is that of the group listing exactly ``emb.weight``, else that of
    the catch-all group 0 (the VGG scripts, whose anchor group missed them)."""
    groups = manifest["optimizer"]["param_groups"]
    anchor_group = next((g for g, group in enumerate(groups) if group.get("param_names") == ["emb.weight"]), 0)
    rows = []
    for s, theirs in enumerate(manifest["optimizer"]["lr_per_step_per_group"]):
        rows.append((f"step{s} base lr", run.learning_rates[s]["base"], theirs[0]))
        if manifest.get("constructor_args", {}).get("qt_num"):
            rows.append((f"step{s} anchor lr", run.learning_rates[s]["anchors"], theirs[anchor_group]))
    errors = [(abs(ours - ref) / abs(ref), key) for key, ours, ref in rows]
    worst = max(errors)
    return train_records.ClassResult("lr", len(errors), worst[0], worst[1], float(np.median([e for e, _ in errors])),
                                     LR_TOL, None)


@dataclasses.dataclass(frozen=True)
class ClassReport:
    """A fixture checked class by class (train-step records, schedules); passes when every class does."""

    fixture: str
    title: str
    classes: list[train_records.ClassResult]

    @property
    def passed(self) -> bool:
        return bool(self.classes) and all(c.passed for c in self.classes)

    def format(self) -> str:
        lines = [f"{self.fixture}: {self.title}",
                 f"  {'class':20s} {'n':>4s} {'max err':>10s} {'tol':>8s} {'median':>10s} {'tol':>8s}  result  worst"]
        for c in self.classes:
            tol_max = "-" if c.tol_max is None else f"{c.tol_max:.1e}"
            tol_median = "-" if c.tol_median is None else f"{c.tol_median:.1e}"
            lines.append(f"  {c.name:20s} {c.n:4d} {c.max_error:10.3e} {tol_max:>8s} {c.median_error:10.3e} "
                         f"{tol_median:>8s}  {'ok  ' if c.passed else 'FAIL'}    {c.max_key}"
                         f"{f' ({c.missing} missing)' if c.missing else ''}")
        passed = sum(c.passed for c in self.classes)
        tail = "" if self.classes else " (nothing to compare)"
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}: {passed}/{len(self.classes)} classes within "
                     f"tolerance{tail}")
        return "\n".join(lines)


def check_train_fixture(manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray], fixture: str,
                        model_name: str, precision: str = "float32",
                        conv_impl: str = DEFAULT_CONV_IMPL) -> ClassReport:
    """Runs the fixture's steps and compares them with ``refs`` (the npz of ``precision``).

    An npz without a single comparable record fails at once, without running anything.
    """
    if not any(train_records.tolerance_class(key, manifest) for key in refs):
        classes, _ = train_records.compare_records({}, refs, manifest, {}, precision)
        return ClassReport(fixture, f"model {model_name}, {precision} records: the npz holds no records", classes)
    run = run_train_steps(manifest, model_name, precision, conv_impl)
    classes, _ = train_records.compare_records(run.records, refs, manifest, state_dict_from_manifest(manifest),
                                               precision)
    classes.append(learning_rate_result(manifest, run))
    epoch = manifest["optimizer"]["lr_epoch"]
    title = (f"model {model_name}, {manifest['num_steps']} training steps at epoch {epoch} "
             f"(step {run.start_step}, {run.steps_per_epoch} steps/epoch), {precision} records, conv {conv_impl}")
    return ClassReport(fixture, title, classes)
