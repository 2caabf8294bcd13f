"""A workdir belongs to one run: its config, a lock against a second concurrent run, and a write check.

Every mode opens its workdir through :func:`open_run`, which checks the config (keys and values), compares
it with the workdir's ``config.json`` (``configs/changes.py`` says what may differ) and refuses a config
that would mix two runs before anything is written. Training then takes the lock (``run.lock``: pid,
host, start time; a lock whose process is gone is taken over) and, once its checkpoint is restored,
records the config (:meth:`Run.record`, atomically).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ml_collections
from etils import epath

from ib_attention_jax.configs import changes as changes_lib
from ib_attention_jax.configs import schema
from ib_attention_jax.errors import UserError
from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.paths import as_path, is_remote

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"


class WorkdirError(UserError):
    """The workdir cannot be used as asked (not writable, unreadable config); the message says why."""


class ConfigMismatchError(WorkdirError):
    """The config differs from the workdir's own in keys that decide what its checkpoints hold."""


class WorkdirLockedError(WorkdirError):
    """Another live process is training in this workdir."""


# -- the recorded config --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StoredConfig:
    """What ``config.json`` holds: the run's id (tags its checkpoints) and its resolved config."""

    run_id: str
    config: dict[str, Any]


def read_stored_config(workdir: str | os.PathLike) -> StoredConfig | None:
    """The workdir's recorded config, or None if it has none."""
    path = as_path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return StoredConfig(str(data["run_id"]), dict(data["config"]))
    except (ValueError, KeyError, TypeError) as err:
        raise WorkdirError(f"{path} is not a config this library wrote ({type(err).__name__}: {err}); restore it "
                           "or move it away (the run is then recorded anew)") from None


def load_workdir_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The workdir's recorded config as a ConfigDict (None if it has none)."""
    stored = read_stored_config(workdir)
    return None if stored is None else schema.from_dict(stored.config)


def write_stored_config(workdir: epath.Path, config: ml_collections.ConfigDict, run_id: str) -> None:
    data = {"run_id": run_id, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "config": config.to_dict()}
    atomic_write_text(workdir / CONFIG_FILE, json.dumps(data, indent=2, sort_keys=True, default=list) + "\n")


# -- write check and lock -------------------------------------------------------------------------------

def check_writable(workdir: epath.Path) -> None:
    """Raises WorkdirError at once if files cannot be created in ``workdir`` (before any long work)."""
    probe = workdir / f".write-check-{os.getpid()}"
    try:
        if is_remote(workdir):
            probe.write_text("")
        else:
            os.close(os.open(os.fspath(probe), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        probe.unlink()
    except OSError as err:
        raise WorkdirError(f"cannot write to the workdir {workdir} ({err.strerror or err}): its outputs go there. "
                           "Make it writable, or copy it and pass the copy as --workdir") from None


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return None if fields[0] == "Z" else fields[19]  # fields after the name: state ... starttime
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    if os.path.isdir("/proc"):
        now = _process_start(pid)
        return now is not None and (start is None or now == start)
    return True


class WorkdirLock:
    """``run.lock`` in the workdir while a run trains there: a second run exits with who holds it.

    A lock left by a process that is gone (same host, pid not running or reused) is taken over with a
    warning. A lock from another host cannot be checked and is never taken over. On object stores
    (``gs://``) the lock is best effort (no atomic create).
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.path = as_path(workdir) / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self.token})

    def _create(self) -> bool:
        if is_remote(self.path):
            if self.path.exists():
                return False
            self.path.write_text(self._record())
            return True
        try:
            fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._record())
        return True

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> WorkdirLock:
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            pid, host = holder.get("pid"), holder.get("host")
            same_host = host == socket.gethostname()
            if isinstance(pid, int) and same_host and (pid == os.getpid() or not _alive(pid, holder.get("start"))):
                log.warning("taking over the stale lock %s of process %d, which is no longer running", self.path, pid)
                print(f"note: taking over the stale lock of process {pid} (no longer running)", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            if not holder:  # being written right now, or unreadable: look again
                time.sleep(0.2)
                if self._holder():
                    continue
                raise WorkdirLockedError(f"{self.path} exists but cannot be read; if no run uses this workdir, "
                                         "delete it and start again")
            raise WorkdirLockedError(
                f"another run is using this workdir: process {pid} on {host}, since {holder.get('since')} "
                f"({self.path}). Wait for it to finish, or stop it (Ctrl-C saves a checkpoint). If that process "
                "is gone (e.g. its machine restarted), delete the lock file and start again")
        raise WorkdirLockedError(f"could not take {self.path}: other runs keep creating it")

    def release(self) -> None:
        if self.held and self._holder().get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- opening a run --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A checked, resolved config bound to its workdir."""

    config: ml_collections.ConfigDict  # resolved (schema.resolve)
    workdir: epath.Path
    run_id: str | None  # tags the checkpoints; None: an evaluation of a workdir that recorded no config
    changes: list[changes_lib.ConfigChange]  # accepted differences from the recorded config
    recorded: bool  # the workdir had a config.json
    writes_config: bool = False  # training on the main process: record() writes config.json

    def record(self) -> None:
        """Writes the config into the workdir (the trainer calls it once its checkpoint is restored)."""
        if self.writes_config:
            write_stored_config(self.workdir, self.config, self.run_id)

    def describe_changes(self, heading: str = "config changed since this workdir's last start "
                                              "(continuing from its checkpoint)") -> str | None:
        """The console report of the accepted changes, or None when there are none."""
        if not self.changes:
            return None
        lines = "\n".join(f"    {c.describe()}" for c in self.changes)
        return f"{heading}:\n{lines}"

    def change_record(self) -> dict[str, dict[str, Any]]:
        """``{key: {"old": ..., "new": ...}}`` for the metrics row."""
        return {c.key: {"old": c.old, "new": c.new} for c in self.changes}


def _mismatch(workdir: epath.Path, refused: list[changes_lib.ConfigChange], train: bool) -> ConfigMismatchError:
    lines = "\n".join(f"    {c.describe()}   ({c.why})" for c in refused)
    way_out = ("Start the new config in a new workdir (--workdir=NEW_DIR), or drop these changes to continue the "
               "run that is there." if train else
               "Leave out --config (and these overrides): the workdir's own config is used.")
    return ConfigMismatchError(f"{workdir} holds another run: its {CONFIG_FILE} differs in what the checkpoints "
                               f"hold:\n{lines}\nNothing was changed. {way_out}")


def prepare_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, train: bool) -> Run:
    """Checks ``config`` and compares it with the workdir's; writes nothing. Raises ConfigError or
    ConfigMismatchError (every refused key, old -> new, and the way out)."""
    schema.check_config(config)
    resolved = schema.resolve(config)
    path = as_path(workdir)
    stored = read_stored_config(path)
    if stored is None:
        return Run(resolved, path, changes_lib.run_identity(resolved.to_dict()) if train else None, [],
                   recorded=False)
    found = changes_lib.compare(stored.config, resolved.to_dict())
    refused = [c for c in found if c.refused]
    if refused:
        raise _mismatch(path, refused, train)
    return Run(resolved, path, stored.run_id, found, recorded=True)


@contextlib.contextmanager
def open_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, train: bool,
             is_main: bool = True) -> Iterator[Run]:
    """The checked run; training also holds the workdir's lock (main process).

    Nothing in the workdir is touched before the config has passed every check.
    """
    run = prepare_run(config, workdir, train=train)
    path = run.workdir
    if not train:
        if not path.exists():
            raise WorkdirError(f"workdir {path} does not exist; train first (--mode=train)")
        check_writable(path)
        yield run
        return
    if not is_main:
        yield run
        return
    path.mkdir(parents=True, exist_ok=True)
    check_writable(path)
    with WorkdirLock(path):
        run = prepare_run(config, path, train=True)  # again under the lock: another run may have recorded one
        run.writes_config = True
        yield run
