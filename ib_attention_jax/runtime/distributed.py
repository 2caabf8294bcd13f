"""The multi-host start every mode makes: ``jax.distributed.initialize`` when the config asks for it.

On a pod (or a SLURM / Open MPI job) each host runs the same command; with ``--config.distributed=True``
the hosts join one JAX runtime before any of them touches a device, so training, evaluation, exports and
the probe all see every host's devices and split the data between the hosts. The CLI calls
:func:`initialize_distributed` before it dispatches a mode, and each mode's library entry point calls it
again (it joins once per process), so a mode called from Python starts the same way.
"""

from __future__ import annotations

import jax
import ml_collections


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Joins this process to the multi-host run ``config`` describes (``distributed``, ``coordinator_address``,
    ``num_processes``, ``process_id``; unset ones are found by JAX on TPU pods, SLURM and Open MPI).

    Returns whether the run is multi-host. Called again in the same process it does nothing."""
    if not config.get("distributed", False):
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=config.get("coordinator_address"),
                                   num_processes=config.get("num_processes"), process_id=config.get("process_id"))
    return True
