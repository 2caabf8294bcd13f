"""Test-session settings: fast XLA compilation on CPU.

Every test compiles its steps once and runs them a few times, so compile time
dominates; XLA's backend optimisation level 0 without the fusion emitters compiles
several times faster. Set before jax is imported; subprocesses inherit it.
Benchmarks and real runs keep XLA's defaults.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
