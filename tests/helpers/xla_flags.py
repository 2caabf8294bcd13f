"""XLA flags that make the tests compile fast on CPU, for the installed jaxlib.

Every test compiles its steps once and runs them a few times, so compile time
dominates: XLA's backend optimisation level 0 compiles several times faster. jaxlib
0.10 also takes ``--xla_cpu_use_fusion_emitters=false`` (a further 2-3x); jaxlib 0.11
no longer knows that flag and aborts on it, so it is only added where it exists.
Reads the version from the package metadata: importing jax here could be too late.
"""

from __future__ import annotations

import os
from importlib import metadata


def _jaxlib_version() -> tuple[int, int]:
    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)


def fast_compile_flags() -> list[str]:
    """The flags for this jaxlib."""
    flags = ["--xla_backend_optimization_level=0"]
    if _jaxlib_version() < (0, 11):
        flags.append("--xla_cpu_use_fusion_emitters=false")
    return flags


def add_fast_compile_flags(environ: os._Environ | dict = os.environ) -> None:
    """Appends the fast-compile flags to ``XLA_FLAGS`` unless an optimisation level is already chosen."""
    current = environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in current:
        environ["XLA_FLAGS"] = " ".join([current, *fast_compile_flags()]).strip()
