"""``--mode=train``: trains (or resumes) the run in the workdir, then tests it (``training/loop.py``)."""

from __future__ import annotations

from typing import Any

import ml_collections

from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.paths import as_path
from ib_attention_jax.training.loop import train_and_evaluate


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """``train_and_evaluate``'s summary with the workdir; prints where the outputs are once the run finished."""
    initialize_distributed(config)
    summary = train_and_evaluate(config, workdir)
    summary["workdir"] = str(as_path(workdir))
    if "stopped_at_step" not in summary:
        print(f"outputs in {summary['workdir']}: summary.json, metrics.jsonl, checkpoints/, attention_overlays.png",
              flush=True)
    return summary
