"""Test-session settings: fast XLA compilation on CPU (see helpers/xla_flags.py).

Set before jax is imported; subprocesses inherit it. Benchmarks and real runs keep
XLA's defaults.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent / "helpers"))

from xla_flags import add_fast_compile_flags  # noqa: E402

add_fast_compile_flags()
