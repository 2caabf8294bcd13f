"""Work directories and output files that may be local or remote (``gs://...``), through etils.epath."""

from __future__ import annotations

import os

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """An epath for ``path``: absolute when local, unchanged when it is a URL such as ``gs://bucket/run``."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://``, ``s3://``, ...) rather than a local file name."""
    return "://" in os.fspath(path)
