"""Flax variables -> a checkpoint file the model's official script loads (``export_official``).

The file has the layout of the official script that trains the model (VGG, WRN or CUB; see
``official_layouts``), so the official test and attention-dump scripts, and their resume
paths, read it as one of their own: ``torch.load(f)['model_states']['net']`` (VGG),
``['state_dict']`` (WRN) or ``solver.load_checkpoint`` (CUB), each loading with
``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from ib_attention_jax.interop.official_layouts import official_checkpoint, script_for
from ib_attention_jax.interop.state_dict import to_state_dict
from ib_attention_jax.models.registry import get_spec


def dead_module_state(family: str) -> dict[str, np.ndarray]:
    """Neutral tensors for modules the official class registers but never uses.

    The CUB WRN-50-2 (``VaNet_wrn``) keeps a ``tmp_layer`` (6 torchvision Bottlenecks,
    512 -> 1024, stride 1) that its forward never calls; ``load_state_dict(strict=True)``
    still wants its keys. Convolutions get zeros, BatchNorms PyTorch's initial state.
    """
    if family != "cub_wrn50_2":
        return {}
    out: dict[str, np.ndarray] = {}

    def conv(name: str, shape: tuple[int, ...]) -> None:
        out[f"{name}.weight"] = np.zeros(shape, np.float32)

    def bn(name: str, n: int) -> None:
        out.update({f"{name}.weight": np.ones(n, np.float32), f"{name}.bias": np.zeros(n, np.float32),
                    f"{name}.running_mean": np.zeros(n, np.float32), f"{name}.running_var": np.ones(n, np.float32),
                    f"{name}.num_batches_tracked": np.zeros((), np.int64)})

    for i in range(6):
        block, in_ch = f"tmp_layer.{i}", 512 if i == 0 else 1024
        conv(f"{block}.conv1", (512, in_ch, 1, 1))
        bn(f"{block}.bn1", 512)
        conv(f"{block}.conv2", (512, 512, 3, 3))
        bn(f"{block}.bn2", 512)
        conv(f"{block}.conv3", (1024, 512, 1, 1))
        bn(f"{block}.bn3", 1024)
        if i == 0:
            conv(f"{block}.downsample.0", (1024, 512, 1, 1))
            bn(f"{block}.downsample.1", 1024)
    return out


def official_module_state_dict(model: nn.Module, variables: Mapping[str, Any],
                               passthrough: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every key the official module's ``load_state_dict(strict=True)`` expects, unprefixed.

    ``to_state_dict`` plus the dead modules: their tensors from ``passthrough`` (what an
    import found in an official file, ``LoadReport.passthrough``) where given, else neutral.
    """
    spec = get_spec(model.model_name)
    out = to_state_dict(model, variables)
    dead = dead_module_state(spec.family)
    given = dict(passthrough or {})
    for key, neutral in dead.items():
        value = np.asarray(given.get(key, neutral))
        if value.shape != neutral.shape:
            raise ValueError(f"passthrough tensor {key} has shape {value.shape}, the official module {neutral.shape}")
        out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_official` wrote."""

    path: str
    script: str
    keys: int  # entries of the (net) state_dict
    ema: bool  # whether net_ema holds EMA weights (CUB; otherwise it repeats net)


def official_checkpoint_for(model: nn.Module, variables: Mapping[str, Any], script: str | None = None, *,
                            ema_variables: Mapping[str, Any] | None = None, epoch: int = 0, step: int = 0,
                            accuracy: float | None = None, learning_rate: float | None = None,
                            passthrough: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(script, checkpoint object)`` with numpy arrays: what :func:`export_official` saves."""
    spec = get_spec(model.model_name)
    script = script or script_for(spec.name, spec.family, spec.plain)
    net = official_module_state_dict(model, variables, passthrough)
    ema = official_module_state_dict(model, ema_variables, passthrough) if ema_variables is not None else None
    quantized = bool(getattr(model, "num_anchors", spec.num_anchors))
    return script, official_checkpoint(script, net, family=spec.family, quantized=quantized, ema_state_dict=ema,
                                       epoch=epoch, step=step, accuracy=accuracy, learning_rate=learning_rate)


def export_official(model: nn.Module, variables: Mapping[str, Any], path: str | os.PathLike,
                    script: str | None = None, *, ema_variables: Mapping[str, Any] | None = None,
                    epoch: int = 0, step: int = 0, accuracy: float | None = None,
                    learning_rate: float | None = None, passthrough: Mapping[str, Any] | None = None
                    ) -> ExportSummary:
    """Writes ``variables`` as an official checkpoint file at ``path`` (local or gs://), atomically.

    ``script`` ("vgg", "wrn" or "cub") defaults to the model's own official script;
    ``ema_variables`` become CUB's ``net_ema``; ``epoch`` (completed epochs), ``step``
    (optimiser steps) and ``accuracy`` (a fraction) fill the bookkeeping the script reads;
    ``learning_rate`` the optimiser state's (default: the official run's). The file loads
    with ``torch.load(path, weights_only=True)``. Needs the torch extra.
    """
    from ib_attention_jax.interop.torch_io import save_torch_object

    script, checkpoint = official_checkpoint_for(model, variables, script, ema_variables=ema_variables, epoch=epoch,
                                                 step=step, accuracy=accuracy, learning_rate=learning_rate,
                                                 passthrough=passthrough)
    save_torch_object(path, checkpoint)
    nets = checkpoint.get("state_dict") or checkpoint["model_states"]["net"]
    return ExportSummary(os.fspath(path), script, len(nets), ema_variables is not None)
