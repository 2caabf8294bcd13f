"""Atomic writes of output files, local or remote: a reader sees the old file or the whole new one, never half.

Local: the data goes to a temporary sibling, is flushed to disk (fsync) and renamed over the target
(``os.replace``, atomic on POSIX); a failed write removes the temporary file and leaves the old one.
Remote (``gs://`` and other URLs, through etils.epath): the object is written in one upload, which object
stores publish only once it is complete, so it is written in place (a rename there would be a copy).
Every output of this library goes through these functions.
"""

from __future__ import annotations

import os
import tempfile

from etils import epath

from ib_attention_jax.runtime.paths import as_path, is_remote


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> epath.Path:
    """Writes ``data`` to ``path`` atomically (the parent folder is created); returns the path as an epath.
    A writer that needs a file (PIL, ``torch.save``) writes into an ``io.BytesIO`` and passes its bytes."""
    target = as_path(path)
    if is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target
    return _replace_local(target, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> epath.Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path as an epath."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _replace_local(target: epath.Path, data: bytes) -> epath.Path:
    """``data`` into a temporary sibling of ``target``, fsync, then ``os.replace`` it over ``target``."""
    directory = os.fspath(target.parent)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; the file gets the usual permissions
        os.replace(tmp, os.fspath(target))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _read_umask() -> int:
    """The process's umask, read once at import (``os.umask`` sets it while reading: not in a running program,
    where a background checkpoint thread may be creating files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
