"""One config schema: the keys of ``base.get_base_config()``, the model builder's options, the values' ranges.

* A key that the base config does not have (``c.batch_sise = 16`` in a file, ``--config.batch_sise=16``
  on the command line) is a :class:`ConfigError` naming it and the closest known keys. A key added to
  ``base.py`` is known everywhere at once.
* ``model_kwargs`` holds options of the model's builder (``create_model``'s keywords): each name is checked
  against the builder's signature, and ``--config.model_kwargs.NAME=VALUE`` is typed from it.
* :func:`check_config` checks the values before anything is built or compiled (batch sizes, steps, names
  of optimisers and schedules, the class count against the dataset's labels, ...);
  :func:`check_device_layout` checks the batch against the devices once they are known.
* :func:`resolve` fills what a config leaves to defaults (the class count, the model's options), so two
  configs that train the same thing compare equal.
"""

from __future__ import annotations

import ast
import copy
import difflib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from ib_attention_jax.configs.base import get_base_config
from ib_attention_jax.errors import ConfigError

MODEL_KWARGS = "model_kwargs"
# Builder keywords the training code sets itself (bn_axis_name, dtype from half_precision, the name).
INTERNAL_MODEL_OPTIONS = ("bn_axis_name", "dtype", "model_name")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_NONE = ("none", "null")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"name": "sgd"}}`` -> ``{"optimizer.name": "sgd"}`` (ConfigDicts and dicts alike)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            flat.update(flatten(value, f"{path}."))
            if not len(value):
                flat[path] = {}
        else:
            flat[path] = value
    return flat


def known_keys() -> list[str]:
    """Every key path of the base config (``model_kwargs`` itself, not its free-form options)."""
    return sorted(flatten(get_base_config()))


def _suggest(key: str, candidates: Iterable[str]) -> str:
    """`` (did you mean a or b?)`` with the closest candidates (within the key's section), or ''."""
    candidates = list(candidates)
    section, _, leaf = key.rpartition(".")
    in_section = {c.rpartition(".")[2]: c for c in candidates if section and c.startswith(section + ".")}
    if in_section:  # optimizer.lerning_rate: compare the last part with the section's keys
        close = [in_section[m] for m in difflib.get_close_matches(leaf, in_section, n=3, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _unknown_key_error(keys: Sequence[str], where: str) -> ConfigError:
    known = known_keys()
    lines = [f"unknown config key {k!r}{_suggest(k, known)}" for k in keys]
    return ConfigError(f"{where}: " + "; ".join(lines) + ". The known keys are those of "
                       "ib_attention_jax/configs/base.py; model options go under model_kwargs.NAME.")


# -- the model's options --------------------------------------------------------------------------------

def model_options(model: str) -> dict[str, inspect.Parameter]:
    """The keyword options of ``model``'s builder that a config may set (name -> parameter)."""
    from ib_attention_jax.models.registry import get_spec

    params = inspect.signature(get_spec(model).builder).parameters
    return {n: p for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in INTERNAL_MODEL_OPTIONS}


def _option_hints(model: str) -> dict[str, Any]:
    from ib_attention_jax.models.registry import get_spec

    hints = typing.get_type_hints(get_spec(model).builder)
    return {n: hints.get(n, Any) for n in model_options(model)}


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _parse_text(text: str, hint: Any) -> Any:
    """``text`` from the command line as a value of type ``hint`` (int, float, bool, str, tuple, unions)."""
    members = _members(hint)
    if type(None) in members and text.strip().lower() in _NONE:
        return None
    for kind in members:
        if kind is type(None):
            continue
        origin = typing.get_origin(kind) or kind
        try:
            if kind is bool:
                low = text.strip().lower()
                if low in _TRUE or low in _FALSE:
                    return low in _TRUE
            elif kind is int:
                return int(text)
            elif kind is float:
                return float(text)
            elif kind is str:
                return text
            elif origin is typing.Literal:
                if text in typing.get_args(kind):
                    return text
            elif origin in (tuple, list):
                value = ast.literal_eval(text)
                return tuple(value) if isinstance(value, list | tuple) else (value,)
            else:  # Any and other types: a Python literal, else the text itself
                try:
                    return ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    return text
        except (ValueError, SyntaxError):
            continue
    raise ValueError(f"{text!r} is not of type {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    names = [getattr(m, "__name__", str(m)) for m in _members(hint)]
    return " or ".join("None" if n == "NoneType" else n for n in names)


def _value_fits(value: Any, hint: Any) -> bool:
    for kind in _members(hint):
        origin = typing.get_origin(kind) or kind
        if kind is Any or (kind is type(None) and value is None):
            return True
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind in (bool, str) and isinstance(value, kind):
            return True
        if origin is typing.Literal and value in typing.get_args(kind):
            return True
        if origin in (tuple, list) and isinstance(value, tuple | list):
            return True
    return False


def check_model_kwargs(config: ml_collections.ConfigDict) -> None:
    """Every ``model_kwargs`` name is an option of the model's builder, with a value of its type."""
    options = _option_hints(config.model)
    given = dict(config.get(MODEL_KWARGS) or {})
    problems = []
    for name, value in given.items():
        if name not in options:
            problems.append(f"{config.model} has no option {name!r}{_suggest(name, options)}")
        elif not _value_fits(value, options[name]):
            problems.append(f"model_kwargs.{name}={value!r} is not of type {_type_name(options[name])}")
    if problems:
        raise ConfigError("; ".join(problems) + f". {config.model}'s options: {', '.join(options)}")


def resolved_model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model's options with the builder's (and the registry's) defaults filled in."""
    from ib_attention_jax.models.registry import get_spec

    spec = get_spec(config.model)
    options = {n: p.default for n, p in model_options(config.model).items() if p.default is not inspect.Parameter.empty}
    if "num_anchors" in options:
        options["num_anchors"] = spec.num_anchors
    options.update(dict(config.get(MODEL_KWARGS) or {}))
    return options


# -- command-line overrides -----------------------------------------------------------------------------

def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.KEY=VALUE`` (also ``--config.KEY VALUE``, ``--noconfig.FLAG``) from the rest.

    Returns (the other arguments, [(KEY, VALUE text)]), so the overrides are applied and checked here,
    whether the config comes from a file or from the workdir.
    """
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    bools = {k for k, v in flatten(get_base_config()).items() if isinstance(v, bool)}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        stripped = arg.lstrip("-")
        if arg.startswith("-") and stripped.startswith(("config.", "noconfig.")):
            negated = stripped.startswith("no")
            key, has_value, value = stripped.removeprefix("no").removeprefix("config.").partition("=")
            if negated:
                value = "false"
            elif not has_value:
                if key in bools and (i + 1 == len(args) or args[i + 1].startswith("--")):
                    value = "true"
                elif i + 1 < len(args):
                    i += 1
                    value = args[i]
                else:
                    raise ConfigError(f"--config.{key} needs a value: --config.{key}=VALUE")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _field_type(config: ml_collections.ConfigDict, key: str) -> Any:
    parent, _, leaf = key.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
        node = node[part]
    kind = node.get_type(leaf)
    nullable = node[leaf] is None or isinstance(node._fields.get(leaf), ml_collections.FieldReference)
    return kind | None if nullable and kind is not type(None) else kind


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]
                    ) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the command line's ``(key, text)`` overrides, each typed and checked."""
    config = copy.deepcopy(config)
    schema = flatten(get_base_config())
    groups = {k.rpartition(".")[0] for k in schema} | {k for k, v in schema.items() if isinstance(v, Mapping)}
    for key, _ in overrides:
        if key in groups:
            raise ConfigError(f"--config.{key} is a group of keys; set one of them: --config.{key}.NAME=VALUE")
    unknown = [k for k, _ in overrides if k not in schema and not k.startswith(MODEL_KWARGS + ".")]
    if unknown:
        raise _unknown_key_error(unknown, "command line")
    ordered = sorted(overrides, key=lambda kv: kv[0].startswith(MODEL_KWARGS + "."))  # model first
    for key, text in ordered:
        if key.startswith(MODEL_KWARGS + "."):
            name = key.removeprefix(MODEL_KWARGS + ".")
            hints = _option_hints(config.model)
            if name not in hints:
                raise ConfigError(f"--config.{key}: {config.model} has no option {name!r}{_suggest(name, hints)}; "
                                  f"its options: {', '.join(hints)}")
            hint = hints[name]
        else:
            hint = _field_type(get_base_config(), key)
        try:
            value = _parse_text(text, hint)
        except ValueError as err:
            raise ConfigError(f"--config.{key}={text}: {err}") from None
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node[part]
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(f"--config.{key}={text}: {err}") from None
    return config


def from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config (typed by the base config) from the plain dict a workdir's ``config.json`` holds."""
    config = get_base_config()
    flat = flatten(values)
    schema = flatten(config)
    unknown = [k for k in flat if k not in schema and not k.startswith(MODEL_KWARGS + ".")]
    if unknown:
        raise _unknown_key_error(unknown, "stored config")
    for key, value in flat.items():
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node[part]
        if isinstance(value, Mapping):  # an empty group, e.g. model_kwargs {}
            continue
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


# -- values ----------------------------------------------------------------------------------------------

def check_keys(config: ml_collections.ConfigDict, where: str = "config") -> None:
    """Raises ConfigError for every key of ``config`` that the base config does not have."""
    schema = flatten(get_base_config())
    unknown = [k for k in flatten(config) if k not in schema and not k.startswith(MODEL_KWARGS + ".")]
    if unknown:
        raise _unknown_key_error(unknown, where)


def _choice(problems: list[str], key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        problems.append(f"{key}={value!r} is not one of {', '.join(map(str, choices))}"
                        f"{_suggest(str(value), choices)}")


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises one ConfigError listing every value that cannot work, each with what it must be."""
    from ib_attention_jax.data.recipes import NORMALIZATIONS, RECIPES, get_recipe
    from ib_attention_jax.models.registry import MODELS, get_spec
    from ib_attention_jax.objectives import KL_FORMS, UNITS
    from ib_attention_jax.runtime.parallel import MODES
    from ib_attention_jax.training.optimizers import OPTIMIZERS
    from ib_attention_jax.training.schedules import SCHEDULES

    problems: list[str] = []
    _choice(problems, "model", config.model, list(MODELS))
    try:
        recipe = get_recipe(config.dataset)
    except ValueError:
        recipe = None
        _choice(problems, "dataset", config.dataset, list(RECIPES))
    if config.normalization is not None:
        _choice(problems, "normalization", config.normalization, list(NORMALIZATIONS))
    opt, obj = config.optimizer, config.objective
    _choice(problems, "optimizer.name", opt.name, OPTIMIZERS)
    _choice(problems, "optimizer.schedule", opt.schedule, SCHEDULES)
    _choice(problems, "objective.kl_form", obj.kl_form, KL_FORMS)
    _choice(problems, "objective.units", obj.units, UNITS)
    _choice(problems, "parallel", config.parallel, MODES)
    at_least = {"batch_size": 1, "eval_batch_size": 1, "num_steps": 0, "num_epochs": 0, "num_workers": 0,
                "num_classes": 0, "num_samples": 1, "eval_num_samples": 1, "beta_warmup_steps": 0,
                "checkpoint_every_steps": 0, "keep_checkpoints": 1, "log_every_steps": 1, "eval_every_steps": 0,
                "export_examples": 0, "optimizer.momentum": 0, "optimizer.weight_decay": 0,
                "optimizer.anchor_lr_ratio": 0, "optimizer.warmup_steps": 0, "optimizer.grad_clip_norm": 0,
                "optimizer.exp_every_epochs": 1, "objective.beta": 0}
    flat = flatten(config)
    for key, low in at_least.items():
        if key in flat and flat[key] is not None and flat[key] < low:
            problems.append(f"{key} must be >= {low}, got {flat[key]}")
    if opt.learning_rate <= 0:
        problems.append(f"optimizer.learning_rate must be > 0, got {opt.learning_rate}")
    if not 0 <= config.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1) (0: no EMA), got {config.ema_decay}")
    if recipe is not None and 0 < config.num_classes < recipe.num_classes:
        problems.append(f"num_classes={config.num_classes} but {recipe.name} has labels 0..{recipe.num_classes - 1} "
                        f"({recipe.num_classes} classes): set num_classes=0 (the dataset's count) or >= "
                        f"{recipe.num_classes}")
    if config.model in MODELS:
        try:
            check_model_kwargs(config)
        except ConfigError as err:
            problems.append(str(err))
        else:
            _check_model_builds(config, recipe, problems)
            size = resolved_model_kwargs(config).get("image_size", get_spec(config.model).image_size)
            if recipe is not None and recipe.image_size != size:
                problems.append(f"{config.model} takes {size}x{size} images but {recipe.name} yields "
                                f"{recipe.image_size}x{recipe.image_size}; pick a model for this dataset")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _check_model_builds(config: ml_collections.ConfigDict, recipe, problems: list[str]) -> None:
    """The registry's own rules on the options (e.g. anchors only on *_qt models): builds the module, no weights."""
    from ib_attention_jax.models.registry import create_model

    classes = config.num_classes or (recipe.num_classes if recipe is not None else None)
    try:
        create_model(config.model, classes, **dict(config.get(MODEL_KWARGS) or {}))
    except (ValueError, TypeError) as err:
        problems.append(str(err))


def check_config(config: ml_collections.ConfigDict, where: str = "config") -> None:
    """Keys and values of ``config`` (everything that can be checked without data or devices)."""
    check_keys(config, where)
    check_values(config)


def check_device_layout(config: ml_collections.ConfigDict, process_count: int, device_count: int) -> None:
    """The global batches split evenly over the hosts and then over every device."""
    problems = []
    for key in ("batch_size", "eval_batch_size"):
        value = config[key]
        if value % process_count:
            problems.append(f"{key}={value} is not divisible by the {process_count} hosts")
        elif value % device_count:
            problems.append(f"{key}={value} is not divisible by the {device_count} devices")
    if problems:
        raise ConfigError("; ".join(problems) + f": use a multiple of {device_count}")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with the defaults made explicit: the dataset's class count, every option of the model."""
    from ib_attention_jax.data.recipes import get_recipe

    resolved = copy.deepcopy(config)
    resolved.num_classes = config.num_classes or get_recipe(config.dataset).num_classes
    resolved.model_kwargs = ml_collections.ConfigDict(resolved_model_kwargs(config))
    return resolved
