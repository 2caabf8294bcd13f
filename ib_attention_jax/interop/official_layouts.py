"""The checkpoint layouts of the three official training scripts, read and written (no torch needed).

What each script saves and what it reads back (the keys below are exactly those):

* VGG (``VGG-backbone-32/cifar_va.py``, ``best_acc.tar``): ``{'epoch', 'args', 'model_states':
  {'net'}, 'optim_states': {'optim'}, 'test_acc', 'test_loss'}``; ``net`` is the state_dict of a
  ``DataParallel`` model (``module.`` keys; the script wraps the model whenever CUDA is there).
  Resuming reads ``epoch``, ``model_states.net``, ``optim_states.optim`` and ``test_acc``;
  ``--phase save_att`` reads ``model_states.net``.
* WRN (``WRN-backbone-32/cifar_va.py``, ``checkpoint.pth.tar`` / ``model_best.pth.tar``):
  ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer', 'amp'}`` with ``module.`` keys;
  resuming reads ``best_acc``, ``epoch``, ``state_dict``, ``optimizer`` and ``amp``; the
  attention dumps read ``best_acc``, ``epoch`` and ``state_dict``.
* CUB (``CUB-experiments/solver.py``, ``solver_qt.py``, ``best_acc.tar``): ``{'iter', 'epoch',
  'history', 'args', 'model_states': {'net', 'net_ema'}, 'optim_states': {'optim'}}`` without the
  prefix; ``load_checkpoint`` reads ``epoch``, ``iter``, ``history``, both nets (strictly) and
  ``optim_states.optim``.

Written files omit ``args`` (the official run's argparse Namespace, which nothing reads back)
and hold an optimiser state with the official parameter groups and no moments, so each
script's ``optimizer.load_state_dict`` accepts it and a resumed run starts its momentum afresh.
Accuracies are fractions here; the VGG and WRN scripts store percentages, CUB fractions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ib_attention_jax.errors import UserError
from ib_attention_jax.interop.naming import FAMILIES

SCRIPT_OF_FAMILY = {"vgg": "vgg", "wrn": "wrn", "cub_vgg16": "cub", "cub_wrn50_2": "cub"}
MODULE_PREFIX = {"vgg": True, "wrn": True, "cub": False}  # DataParallel keys in the saved state_dict
DEFAULT_LR = {"vgg": 0.01, "wrn": 0.1, "cub": 1e-4}  # the README runs' --lr
ANCHOR_LR_RATIO = 1e-4  # --lr_ratio of the VGG and WRN scripts
AMP_INITIAL_LOSS_SCALE = 2.0 ** 16  # apex O1's dynamic loss scale before any step
_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")
_CUB_HISTORY = ("avg_acc", "avg_acc_ema", "info_loss", "latent_loss1", "latent_loss2", "class_loss",
                "class_loss_ori", "total_loss")
_CUB_QT_HISTORY = ("vq_loss", "commit_loss", "qt_loss")
_OTHER_NESTED_KEYS = ("model_state_dict", "model", "net")


class OfficialLayoutError(UserError, ValueError):
    """A checkpoint object in none of the official layouts, or a model no official script trains."""


@dataclasses.dataclass(frozen=True)
class OfficialContents:
    """What an official checkpoint object holds: its layout, the nets and the bookkeeping read back."""

    layout: str  # "vgg", "wrn", "cub" or "state_dict" (a bare state_dict)
    net: dict[str, Any]
    net_ema: dict[str, Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # epoch, iter, best_acc, test_acc, ...


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def read_layout(checkpoint: Any) -> OfficialContents:
    """Splits a loaded checkpoint object into its layout, nets and bookkeeping."""
    if _is_tensor_dict(checkpoint):
        return OfficialContents("state_dict", dict(checkpoint))
    if not isinstance(checkpoint, Mapping):
        raise OfficialLayoutError(f"not a checkpoint dictionary but a {type(checkpoint).__name__}")
    if "model_states" in checkpoint and isinstance(checkpoint["model_states"], Mapping):
        states = checkpoint["model_states"]
        if not _is_tensor_dict(states.get("net")):
            raise OfficialLayoutError(f"checkpoint model_states holds {sorted(states)}, no 'net' state_dict")
        cub = "net_ema" in states or "iter" in checkpoint or "history" in checkpoint
        ema = states.get("net_ema")
        keys = ("epoch", "iter") if cub else ("epoch", "test_acc", "test_loss")
        info = {k: checkpoint[k] for k in keys if k in checkpoint}
        return OfficialContents("cub" if cub else "vgg", dict(states["net"]),
                                dict(ema) if _is_tensor_dict(ema) else None, info)
    if _is_tensor_dict(checkpoint.get("state_dict")):
        info = {k: checkpoint[k] for k in ("epoch", "acc", "best_acc") if k in checkpoint}
        return OfficialContents("wrn", dict(checkpoint["state_dict"]), None, info)
    for key in _OTHER_NESTED_KEYS:  # common non-official wrappers of a state_dict
        if _is_tensor_dict(checkpoint.get(key)):
            return OfficialContents("state_dict", dict(checkpoint[key]))
    raise OfficialLayoutError(
        f"no state_dict in a checkpoint with keys {sorted(map(str, checkpoint))}: expected a bare state_dict, "
        "{'state_dict': ...} (WRN script) or {'model_states': {'net': ...}} (VGG and CUB scripts)")


def script_for(model_name: str, family: str, plain: bool) -> str:
    """The official script that trains this registered model (``vgg``, ``wrn`` or ``cub``)."""
    if plain or family not in SCRIPT_OF_FAMILY:
        raise OfficialLayoutError(
            f"{model_name} is not an official model, so no official script loads it; write a bare state_dict "
            "with interop.save_official_checkpoint(path, to_state_dict(model, variables)) instead")
    return SCRIPT_OF_FAMILY[family]


def parameter_count(state_dict: Mapping[str, Any], family: str) -> int:
    """How many ``nn.Parameter`` s the official module behind ``state_dict`` (unprefixed keys) has.

    Buffers (running statistics, counters) are not parameters, and an alias key (a module
    registered twice) names the same parameter as its canonical key.
    """
    aliases = tuple(FAMILIES[family].aliases) if family in FAMILIES else ()
    return sum(1 for k in state_dict if not k.endswith(_BUFFERS) and not (aliases and k.startswith(aliases)))


def optimizer_state(script: str, num_params: int, quantized: bool, lr: float) -> dict[str, Any]:
    """An optimiser ``state_dict`` with the script's parameter groups and no per-parameter state.

    VGG: SGD; the QT script makes a second group for ``emb.weight`` but, under DataParallel,
    names the anchor ``module.emb.weight``, so that group is empty. WRN: SGD, the QT anchors in
    their own group at ``lr * 1e-4``. CUB: one Adam group (frozen anchors included).
    """
    if script == "cub":
        group = {"lr": lr, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False}
        sizes, lrs = [num_params], [lr]
    else:
        group = {"lr": lr, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4, "nesterov": False}
        if not quantized:
            sizes, lrs = [num_params], [lr]
        elif script == "vgg":
            sizes, lrs = [num_params, 0], [lr, lr * ANCHOR_LR_RATIO]
        else:
            sizes, lrs = [num_params - 1, 1], [lr, lr * ANCHOR_LR_RATIO]
    groups, start = [], 0
    for size, group_lr in zip(sizes, lrs, strict=True):
        groups.append({**group, "lr": group_lr, "params": list(range(start, start + size))})
        start += size
    return {"state": {}, "param_groups": groups}


def official_checkpoint(script: str, state_dict: Mapping[str, np.ndarray], *, family: str, quantized: bool,
                        ema_state_dict: Mapping[str, np.ndarray] | None = None, epoch: int = 0, step: int = 0,
                        accuracy: float | None = None, learning_rate: float | None = None) -> dict[str, Any]:
    """The object the official ``script`` saves, holding ``state_dict`` (unprefixed official keys).

    ``epoch`` counts completed epochs and ``step`` optimiser steps (CUB's ``iter``);
    ``accuracy`` (a fraction, or None for 0) becomes the best accuracy the script compares
    new results against. Without ``ema_state_dict`` the CUB ``net_ema`` repeats ``net``
    (the CUB script needs both).
    """
    if script not in MODULE_PREFIX:
        raise OfficialLayoutError(f"unknown official script {script!r}; one of {sorted(MODULE_PREFIX)}")
    if ema_state_dict is not None and script != "cub":
        raise OfficialLayoutError(f"the {script.upper()} script keeps no EMA weights; only the CUB layout has net_ema")
    prefix = "module." if MODULE_PREFIX[script] else ""
    net = {prefix + k: v for k, v in state_dict.items()}
    lr = DEFAULT_LR[script] if learning_rate is None else float(learning_rate)
    optim = optimizer_state(script, parameter_count(state_dict, family), quantized, lr)
    acc = 0.0 if accuracy is None else float(accuracy)
    if script == "vgg":
        return {"epoch": int(epoch), "model_states": {"net": net}, "optim_states": {"optim": optim},
                "test_acc": 100.0 * acc, "test_loss": 0.0}
    if script == "wrn":
        return {"epoch": int(epoch), "state_dict": net, "acc": 100.0 * acc, "best_acc": 100.0 * acc,
                "optimizer": optim, "amp": {"loss_scaler0": {"loss_scale": AMP_INITIAL_LOSS_SCALE, "unskipped": 0}}}
    history: dict[str, Any] = {k: 0.0 for k in _CUB_HISTORY + (_CUB_QT_HISTORY if quantized else ())}
    history.update(avg_acc=acc, avg_acc_ema=acc if ema_state_dict is not None else 0.0, epoch=int(epoch),
                   iter=int(step))
    ema = dict(ema_state_dict) if ema_state_dict is not None else dict(net)
    return {"iter": int(step), "epoch": int(epoch), "history": history,
            "model_states": {"net": net, "net_ema": ema}, "optim_states": {"optim": optim}}
