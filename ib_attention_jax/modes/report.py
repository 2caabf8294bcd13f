"""``--mode=report``: the run's ``report.html`` (``evaluation/report.py`` builds it)."""

from __future__ import annotations

from typing import Any

import ml_collections

from ib_attention_jax.evaluation.report import write_run_report
from ib_attention_jax.runtime.distributed import initialize_distributed


def run_report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The run's report page (the config names the page)."""
    initialize_distributed(config)
    return write_run_report(workdir, title=f"{config.model} on {config.dataset}")
