"""Official ``.tar``/``.pth`` checkpoints (needs the optional torch extra).

``torch.load`` runs with ``weights_only=True``: only tensors, containers and the
argparse Namespace the official CUB solver stores are unpickled, never code.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

TORCH_HINT = "install the optional extra: pip install -r requirements-torch.txt (or `make torch`)"

# Where the official scripts keep the network's state_dict inside a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        hasattr(v, "shape") and isinstance(k, str) for k, v in obj.items())


def extract_state_dict(checkpoint: Any, which: str = "net") -> dict[str, Any]:
    """The network's state_dict inside an official checkpoint object.

    Handles a bare state_dict (VGG ``best_acc.tar``), ``{'state_dict': ...}`` (WRN
    ``checkpoint.pth.tar``) and ``{'model_states': {'net': ..., 'net_ema': ...}}`` (CUB
    ``best_acc.tar``; ``which='net_ema'`` picks the EMA weights).
    """
    if _is_tensor_dict(checkpoint):
        return dict(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"not a checkpoint dictionary: {type(checkpoint).__name__}")
    if "model_states" in checkpoint:
        states = checkpoint["model_states"]
        if which not in states:
            raise KeyError(f"checkpoint model_states has {sorted(states)}, not {which!r}")
        return extract_state_dict(states[which], which)
    for key in _NESTED_KEYS:
        if key in checkpoint:
            return extract_state_dict(checkpoint[key], which)
    raise KeyError(f"no state_dict in checkpoint with keys {sorted(checkpoint)}; "
                   f"expected a bare state_dict or one of {_NESTED_KEYS + ('model_states',)}")


def load_official_checkpoint(path: str | pathlib.Path, which: str = "net") -> dict[str, np.ndarray]:
    """An official checkpoint file as ``{official key: numpy array}`` (``module.`` kept; see state_dict)."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"loading {path} needs PyTorch: {TORCH_HINT}") from err
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = extract_state_dict(checkpoint, which)
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def save_official_checkpoint(path: str | pathlib.Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """Writes a state_dict as the official code loads it (``torch.load`` + ``load_state_dict``)."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"saving {path} needs PyTorch: {TORCH_HINT}") from err
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, str(path))
