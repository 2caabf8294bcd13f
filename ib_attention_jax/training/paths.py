"""Work directories that may be local or remote (``gs://...``), through etils.epath."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """An epath for ``path``: absolute when local, unchanged when it is a URL such as ``gs://bucket/run``."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def atomic_write_text(path: epath.Path, text: str) -> None:
    """Writes ``text`` to a temporary sibling, then renames it over ``path``."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def write_via_local_file(path: epath.Path, write: Callable[[str], object]) -> epath.Path:
    """Calls ``write(local_filename)`` and moves the file to ``path`` (which may be remote)."""
    if "://" not in os.fspath(path):
        write(os.fspath(path))
        return path
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, path.name)
        write(local)
        with open(local, "rb") as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return path
