"""CPU-only jax setup for the helper processes; import and call before jax creates its backend.

Imports nothing from the library, so calling :func:`configure` first is always in time.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax

# Compile-time flags for these tests only: on a small CPU machine XLA's fusion emitters and
# LLVM optimisation make up most of a train step's ~15 s compile; without them it takes ~3 s.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
HERE = pathlib.Path(__file__).resolve().parent


def configure(num_cpu_devices: int, fast_compile: bool = True) -> None:
    """``num_cpu_devices`` simulated CPU devices in this process; the helpers and the repository importable."""
    if fast_compile:
        flags = os.environ.get("XLA_FLAGS", "").split()
        os.environ["XLA_FLAGS"] = " ".join(flags + [f for f in FAST_COMPILE_FLAGS if f not in flags])
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    for path in (str(HERE.parents[1]), str(HERE)):  # the repository root, then this folder (parallel_common)
        if path not in sys.path:
            sys.path.insert(0, path)
