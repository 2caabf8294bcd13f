"""Official ``.tar``/``.pth`` checkpoint files, read and written (needs the optional torch extra).

``torch.load`` runs with ``weights_only=True``: only tensors, containers and the argparse
Namespace the official scripts store are unpickled, never code. Paths may be local or
``gs://`` (etils.epath). Files are written atomically (``runtime.atomic``), so an interrupted write
never leaves a half file under the target's name.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ib_attention_jax.errors import UserError
from ib_attention_jax.interop.official_layouts import OfficialContents, read_layout
from ib_attention_jax.interop.state_dict import as_numpy
from ib_attention_jax.runtime.atomic import atomic_write_bytes
from ib_attention_jax.runtime.paths import as_path

TORCH_HINT = "install the optional extra: pip install -r requirements-torch.txt (or `make torch`)"


class OfficialCheckpointError(UserError, ValueError):
    """A checkpoint file that is empty, truncated or not a PyTorch checkpoint."""


def _torch(action: str, path: Any):
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{action} {path} needs PyTorch: {TORCH_HINT}") from err
    return torch


def read_checkpoint_object(path: str | os.PathLike) -> Any:
    """The object in a PyTorch checkpoint file, with ``weights_only=True``."""
    file = as_path(path)
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if file.is_dir():
        raise OfficialCheckpointError(f"{path} is a directory, not a PyTorch checkpoint file")
    data = file.read_bytes()
    if not data:
        raise OfficialCheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted download or copy? "
                                      "fetch the file again")
    torch = _torch("reading", path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle is named with the file
        raise OfficialCheckpointError(f"{path} ({len(data)} bytes) could not be read as a PyTorch checkpoint: "
                                      f"{type(err).__name__}: {str(err)[:500]}") from err


def _numpy_tree(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: as_numpy(v, k) for k, v in state_dict.items()}


def read_official_file(path: str | os.PathLike) -> OfficialContents:
    """An official checkpoint file (any of the three layouts, or a bare state_dict) as numpy arrays.

    Keys keep their prefixes (``module.``); bfloat16 tensors become float32.
    """
    contents = read_layout(read_checkpoint_object(path))
    ema = _numpy_tree(contents.net_ema) if contents.net_ema is not None else None
    return OfficialContents(contents.layout, _numpy_tree(contents.net), ema, contents.info)


def load_official_checkpoint(path: str | os.PathLike, which: str = "net") -> dict[str, np.ndarray]:
    """An official checkpoint file's state_dict as ``{official key: numpy array}`` (``module.`` kept).

    ``which='net_ema'`` picks the EMA weights of a CUB checkpoint.
    """
    contents = read_official_file(path)
    if which == "net":
        return contents.net
    if which == "net_ema" and contents.net_ema is not None:
        return contents.net_ema
    raise KeyError(f"{path} ({contents.layout} layout) has no {which!r} weights; it holds 'net'"
                   + (" and 'net_ema'" if contents.net_ema is not None else ""))


def extract_state_dict(checkpoint: Any, which: str = "net") -> dict[str, Any]:
    """The network's state_dict inside an official checkpoint object (``which='net_ema'``: CUB's EMA)."""
    contents = read_layout(checkpoint)
    if which == "net":
        return contents.net
    if which == "net_ema" and contents.net_ema is not None:
        return contents.net_ema
    raise KeyError(f"checkpoint ({contents.layout} layout) has no {which!r} weights")


def _to_tensors(obj: Any, torch) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return torch.from_numpy(np.array(obj, copy=True, order="C"))
    if isinstance(obj, Mapping):
        return {k: _to_tensors(v, torch) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_tensors(v, torch) for v in obj)
    return obj


def save_torch_object(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of ``obj`` (numpy arrays become tensors), written atomically."""
    torch = _torch("saving", path)
    buffer = io.BytesIO()
    torch.save(_to_tensors(obj, torch), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_official_checkpoint(path: str | os.PathLike | pathlib.Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """Writes a bare state_dict (``torch.load`` + ``load_state_dict``); for the scripts' own
    layouts use :func:`ib_attention_jax.interop.export.export_official`."""
    save_torch_object(path, dict(state_dict))
