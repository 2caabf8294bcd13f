"""CPU-only jax setup for the helper processes; import and call before jax creates its backend.

Imports nothing from the library, so calling :func:`configure` first is always in time.
"""

from __future__ import annotations

import pathlib
import sys

import jax
from xla_flags import add_fast_compile_flags

HERE = pathlib.Path(__file__).resolve().parent


def configure(num_cpu_devices: int, fast_compile: bool = True) -> None:
    """``num_cpu_devices`` simulated CPU devices in this process; the helpers and the repository importable."""
    if fast_compile:
        add_fast_compile_flags()
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    for path in (str(HERE.parents[1]), str(HERE)):  # the repository root, then this folder (parallel_common)
        if path not in sys.path:
            sys.path.insert(0, path)
