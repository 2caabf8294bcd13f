"""Starting weights for a run (``config.init_from``): official checkpoints, ImageNet backbones, other runs.

:func:`load_init_weights` takes a path (local or ``gs://``) to

* an official checkpoint file in any of the three official layouts (VGG ``best_acc.tar``,
  WRN ``checkpoint.pth.tar`` / ``model_best.pth.tar``, CUB ``best_acc.tar``) or a bare official
  state_dict (needs the torch extra);
* torchvision's ImageNet state_dict of ``vgg16`` or ``wide_resnet50_2`` (``vgg16-397923af.pth``,
  ``wide_resnet50_2-95faca4d.pth``), loaded into a CUB model's backbone as the official CUB
  models load it; their attention head, encoder head, decoder and anchors keep their init;
* this project's checkpoint: another run's work directory (its ``checkpoints/``), that
  directory itself or one step's folder in it.

Only parameters and batch statistics are read, never an optimiser state. Whatever fits is
loaded, the model's other variables keep ``variables`` (its initialisation), and the
:class:`LoadReport` names the groups loaded, kept at init and ignored; a tensor of the
wrong shape is refused with its key named.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from ib_attention_jax.interop.load_report import IGNORED, KEPT, LOADED, LoadReport, build_report, group_by_status
from ib_attention_jax.interop.state_dict import (
    COLLECTIONS,
    StateDictError,
    from_state_dict,
    strip_wrapper_prefixes,
)
from ib_attention_jax.interop.torchvision import backbone_entries, detect_backbone
from ib_attention_jax.models.registry import get_spec
from ib_attention_jax.runtime.paths import as_path

_LAYOUT_NAMES = {"vgg": "official VGG checkpoint", "wrn": "official WRN checkpoint",
                 "cub": "official CUB checkpoint", "state_dict": "state_dict"}


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A weight source read once: official/torchvision state_dicts or a project checkpoint's variables."""

    label: str
    state_dict: Mapping[str, Any] | None = None  # official or torchvision names
    ema_state_dict: Mapping[str, Any] | None = None  # a CUB checkpoint's net_ema
    variables: Mapping[str, Any] | None = None  # a project checkpoint (Flax paths)
    ema_variables: Mapping[str, Any] | None = None  # its EMA, when that run kept one
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # epoch, iter, best_acc, step, ...

    @property
    def has_ema(self) -> bool:
        return self.ema_state_dict is not None or bool(self.ema_variables)


def read_init_source(path_or_url: str | os.PathLike) -> InitSource:
    """Reads what ``path_or_url`` holds (a file needs the torch extra; a directory is a project checkpoint)."""
    path = as_path(path_or_url)
    if not path.exists():
        raise FileNotFoundError(f"init_from {os.fspath(path_or_url)} does not exist: give an official checkpoint "
                                "file, a torchvision ImageNet .pth or another run's work directory")
    if path.is_dir():
        return _read_project_checkpoint(path)
    from ib_attention_jax.interop.torch_io import read_official_file

    contents = read_official_file(path)
    label = f"{_LAYOUT_NAMES[contents.layout]} {os.fspath(path_or_url)}"
    if contents.layout != "state_dict":
        label += f" ({'state_dict' if contents.layout == 'wrn' else 'model_states.net'})"
    return InitSource(label, contents.net, contents.net_ema, info=dict(contents.info, layout=contents.layout))


def load_from_source(source: InitSource, model: nn.Module, variables: Mapping[str, Any], *,
                     ema: bool = False) -> tuple[dict[str, Any], LoadReport]:
    """``(variables, report)`` from a read source; ``ema=True`` takes its EMA weights (CUB net_ema, a run's EMA)."""
    if ema and not source.has_ema:
        raise KeyError(f"{source.label} holds no EMA weights")
    if source.variables is not None:
        loaded, report = merge_flax_variables(source.ema_variables if ema else source.variables, model, variables,
                                              source=source.label + (" (EMA)" if ema else ""))
    else:
        state_dict = source.ema_state_dict if ema else source.state_dict
        label = source.label.replace("model_states.net", "model_states.net_ema") if ema else source.label
        loaded, report = load_state_dict_init(state_dict, model, variables, source=label)
    return loaded, dataclasses.replace(report, info=dict(source.info))


def load_init_weights(path_or_url: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any], *,
                      which: str = "net", use_ema: bool = False) -> tuple[dict[str, Any], LoadReport]:
    """``(variables, report)``: ``variables`` with every tensor the source at ``path_or_url`` has for ``model``.

    ``which='net_ema'`` reads a CUB checkpoint's EMA weights; ``use_ema=True`` a project
    checkpoint's EMA (when the run kept one). ``report.info`` holds the source's bookkeeping
    (an official file's epoch, iter, best_acc...; a checkpoint's step).
    """
    if which not in ("net", "net_ema"):
        raise ValueError(f"which must be 'net' or 'net_ema', got {which!r}")
    source = read_init_source(path_or_url)
    return load_from_source(source, model, variables, ema=which == "net_ema" or use_ema)


def load_init_weights_and_ema(path_or_url: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any]
                              ) -> tuple[dict[str, Any], dict[str, Any] | None, LoadReport]:
    """``(variables, ema_variables or None, report)`` from one read of the source (for exports and EMA runs)."""
    source = read_init_source(path_or_url)
    loaded, report = load_from_source(source, model, variables)
    ema = load_from_source(source, model, variables, ema=True)[0] if source.has_ema else None
    return loaded, ema, report


def load_state_dict_init(state_dict: Mapping[str, Any], model: nn.Module, variables: Mapping[str, Any], *,
                         source: str = "state_dict") -> tuple[dict[str, Any], LoadReport]:
    """The state_dict part of :func:`load_init_weights` (official or torchvision names; no file, no torch)."""
    keys, _ = strip_wrapper_prefixes({k: None for k in state_dict})
    backbone = detect_backbone(keys)
    if backbone is None:
        return from_state_dict(model, state_dict, strict=False, init=variables, source=source)
    spec = get_spec(model.model_name)
    stripped, _ = strip_wrapper_prefixes(state_dict)
    entries, head = backbone_entries(stripped, backbone, spec.family, model.model_name)
    label = f"torchvision ImageNet {backbone.name} ({source})" if source else f"torchvision ImageNet {backbone.name}"
    loaded, report = from_state_dict(model, entries, strict=False, init=variables, source=label)
    head_groups = group_by_status({tuple(k.split(".")): IGNORED for k in head}, ".").get(IGNORED, [])
    notes = (*report.notes, f"the ImageNet classifier ({', '.join(g for g, _ in head_groups)}) is not used, "
             "as in the official CUB models") if head_groups else report.notes
    return loaded, dataclasses.replace(report, ignored=report.ignored + tuple(head_groups), notes=notes)


def _checkpoint_location(path: epath.Path) -> tuple[epath.Path, int | None]:
    """``(checkpoints directory, step or None for the newest)`` for a workdir, its checkpoints/ or one step."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and (path / "state").exists():
        return path.parent, int(path.name)
    if any(child.name.isdigit() for child in path.iterdir()):
        return path, None
    raise FileNotFoundError(f"{path} holds no checkpoint of this project: give a work directory (with "
                            "checkpoints/), its checkpoints/ folder or one step's folder in it")


def _read_project_checkpoint(path: epath.Path) -> InitSource:
    """Parameters, batch statistics (and EMA) of a run's newest readable checkpoint, or of one step."""
    from ib_attention_jax.training.checkpoint import Checkpointer

    directory, step = _checkpoint_location(path)
    checkpointer = Checkpointer(directory)
    try:
        restored = checkpointer.restore(None, step)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    state, _, step = restored
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    return InitSource(f"checkpoint {directory}/{step}", variables=variables, ema_variables=state.get("ema") or None,
                      info={"step": int(step)})


def load_project_checkpoint(path: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any], *,
                            use_ema: bool = False) -> tuple[dict[str, Any], LoadReport]:
    """Parameters and batch statistics of another run's newest readable checkpoint (or of one step)."""
    return load_from_source(_read_project_checkpoint(as_path(path)), model, variables, ema=use_ema)


def merge_flax_variables(source_variables: Mapping[str, Any], model: nn.Module, variables: Mapping[str, Any], *,
                         source: str = "") -> tuple[dict[str, Any], LoadReport]:
    """``variables`` with each leaf that ``source_variables`` (of this project) has at the same path and shape."""
    target = traverse_util.flatten_dict({c: variables[c] for c in COLLECTIONS if c in variables})
    given = traverse_util.flatten_dict({c: source_variables[c] for c in COLLECTIONS if source_variables.get(c)})
    misshaped = [f"{'/'.join(p)}: got {tuple(np.shape(given[p]))}, expected {tuple(np.shape(v))}"
                 for p, v in target.items() if p in given and tuple(np.shape(given[p])) != tuple(np.shape(v))]
    if misshaped:
        raise StateDictError(f"mis-shaped variables: {'; '.join(misshaped[:5])}"
                             + (f" and {len(misshaped) - 5} more" if len(misshaped) > 5 else "")
                             + f": {source or 'the checkpoint'} was made for another configuration of "
                             f"{model.model_name} (class count, latent size, anchors?)")
    if not any(p in given for p in target):
        raise StateDictError(f"no variable of {source or 'the checkpoint'} fits {model.model_name}: "
                             "a checkpoint of a model of another family?")
    merged, statuses = {}, {}
    for path, init in target.items():
        if path in given:
            merged[path] = jnp.asarray(np.asarray(given[path]), jnp.asarray(init).dtype)
            statuses[path[1:]] = LOADED
        else:
            merged[path], statuses[path[1:]] = init, KEPT
    source_status = {p[1:]: LOADED if p in target else IGNORED for p in given}
    return traverse_util.unflatten_dict(merged), build_report(model.model_name, statuses, source_status,
                                                              source=source, source_sep="/")
