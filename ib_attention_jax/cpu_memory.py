"""Transparent huge pages for the process's large allocations (Linux, glibc >= 2.35).

XLA's CPU runtime and PyTorch allocate their large buffers with ``malloc``, which maps
them fresh from the kernel in 4 KiB pages. A train step touches gigabytes of such
buffers, and the page faults showed: on a 2-core Linux machine the vgg_aib train step at
batch 32 ran 10-20% faster with glibc's ``glibc.malloc.hugetlb=1`` tunable, which asks
the kernel for 2 MiB transparent huge pages wherever ``malloc`` maps memory.

glibc reads tunables only at process start, so the setting is made by starting the
program again with ``GLIBC_TUNABLES`` set (:func:`reexec_with_huge_pages`), before any
work is done. Set ``IB_ATTENTION_NO_HUGE_PAGES=1`` to opt out.

The restart is for JAX's CPU backend only; it is not made where JAX will pick a GPU or TPU
(:func:`default_backend_is_cpu`), where the large buffers live on the device.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "IB_ATTENTION_NO_HUGE_PAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """True on Linux with glibc >= 2.35 and transparent huge pages not set to ``never``."""
    if sys.platform != "linux":
        return False
    libc, version = platform.libc_ver()
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return False
    if libc != "glibc" or (major, minor) < (2, 35):
        return False
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def accelerator_plugins() -> list[str]:
    """The GPU/TPU plugins JAX would load, found without importing them or starting a backend.

    JAX loads every module under the ``jax_plugins`` namespace package and every ``jax_plugins``
    entry point (the CUDA and ROCm plugins), and a TPU backend from the ``libtpu`` package.
    """
    found = set()
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        found |= {f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)}
    found |= {e.value for e in importlib.metadata.entry_points(group="jax_plugins")}
    if importlib.util.find_spec("libtpu") is not None:
        found.add("libtpu")
    return sorted(found)


def default_backend_is_cpu(environ: Mapping[str, str] | None = None, plugins: Sequence[str] | None = None) -> bool:
    """Whether JAX's default backend will be the CPU, decided before JAX starts.

    ``JAX_PLATFORMS`` set: its first platform is the default, so CPU iff that is ``cpu``. Unset
    (JAX picks a GPU or TPU when one is available): CPU iff no accelerator plugin is installed
    (:func:`accelerator_plugins`) and ``TPU_LIBRARY_PATH`` is unset. A plugin installed on a host
    without its device counts as an accelerator (no restart: a lost speed-up, never a wrong
    one); ``JAX_PLATFORMS=cpu`` states the CPU there.
    """
    env = os.environ if environ is None else environ
    platforms = [p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    if env.get("TPU_LIBRARY_PATH"):
        return False
    return not (accelerator_plugins() if plugins is None else plugins)


def huge_pages_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started with the huge-page tunable."""
    env = os.environ if environ is None else environ
    return TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def environment_with_huge_pages(environ: dict[str, str]) -> dict[str, str]:
    """A copy of ``environ`` whose ``GLIBC_TUNABLES`` also holds the huge-page tunable."""
    env = dict(environ)
    current = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*current, TUNABLE])
    return env


def reexec_with_huge_pages(module: str, argv: Sequence[str]) -> None:
    """Restarts ``python -m module *argv`` with the tunable, unless set, unavailable, opted out or
    not on the CPU backend.

    Call it first thing under ``if __name__ == "__main__":``; it returns only when it
    does not restart.
    """
    if huge_pages_requested() or os.environ.get(OPT_OUT_ENV) or not huge_pages_available():
        return
    if not default_backend_is_cpu():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], environment_with_huge_pages(dict(os.environ)))
