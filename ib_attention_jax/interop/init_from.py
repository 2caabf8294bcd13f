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
from ib_attention_jax.training.paths import as_path

_LAYOUT_NAMES = {"vgg": "official VGG checkpoint", "wrn": "official WRN checkpoint",
                 "cub": "official CUB checkpoint", "state_dict": "state_dict"}


def load_init_weights(path_or_url: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any], *,
                      which: str = "net", use_ema: bool = False) -> tuple[dict[str, Any], LoadReport]:
    """``(variables, report)``: ``variables`` with every tensor the source at ``path_or_url`` has for ``model``.

    ``which='net_ema'`` reads a CUB checkpoint's EMA weights; ``use_ema=True`` a project
    checkpoint's EMA (when the run kept one).
    """
    path = as_path(path_or_url)
    if not path.exists():
        raise FileNotFoundError(f"init_from {os.fspath(path_or_url)} does not exist: give an official checkpoint "
                                "file, a torchvision ImageNet .pth or another run's work directory")
    if path.is_dir():
        return load_project_checkpoint(path, model, variables, use_ema=use_ema)
    from ib_attention_jax.interop.torch_io import read_official_file

    contents = read_official_file(path)
    if which == "net_ema" and contents.net_ema is None:
        raise KeyError(f"{path} ({contents.layout} layout) has no EMA weights (net_ema); use which='net'")
    if which not in ("net", "net_ema"):
        raise ValueError(f"which must be 'net' or 'net_ema', got {which!r}")
    state_dict = contents.net if which == "net" else contents.net_ema
    label = f"{_LAYOUT_NAMES[contents.layout]} {os.fspath(path_or_url)}"
    if contents.layout in ("vgg", "wrn", "cub"):
        label += f" ({'model_states.' + which if contents.layout != 'wrn' else 'state_dict'})"
    return load_state_dict_init(state_dict, model, variables, source=label)


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


def load_project_checkpoint(path: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any], *,
                            use_ema: bool = False) -> tuple[dict[str, Any], LoadReport]:
    """Parameters and batch statistics of another run's newest readable checkpoint (or of one step)."""
    from ib_attention_jax.training.checkpoint import Checkpointer

    directory, step = _checkpoint_location(as_path(path))
    checkpointer = Checkpointer(directory)
    try:
        restored = checkpointer.restore(None, step)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    state, _, step = restored
    source = state.get("ema") if use_ema else None
    if use_ema and not source:
        raise ValueError(f"the checkpoint in {directory} has no EMA weights (that run kept none); use use_ema=False")
    source = source or {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    return merge_flax_variables(source, model, variables, source=f"checkpoint {directory}/{step}")


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
