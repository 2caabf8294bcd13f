"""``--mode=linear_probe``: the workdir's trained weights probed on another dataset, ``probe.json``
(the probe itself is ``evaluation/probe.py``)."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from ib_attention_jax.evaluation.probe import ensure_probe_data, probe_dataset, probe_recipe, run_probe
from ib_attention_jax.modes.restore import restore_for_evaluation
from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.paths import as_path


def linear_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Features of the trained weights on another dataset, a linear probe, probe.json."""
    initialize_distributed(config)
    ensure_probe_data(probe_recipe(probe_dataset(config)), config.get("data_dir"))  # before the restore's work
    restored = restore_for_evaluation(config, workdir)
    exp = restored.experiment
    result = run_probe(restored.config, exp.model, restored.runner, restored.state, exp.host_eval_batch)
    summary = {}
    for key, value in result.items():
        if key == "features":  # where the weights came from, before the results (probe.json's order)
            summary.update(checkpoint_step=restored.step, weights=restored.weights)
        summary[key] = value
    if jax.process_index() == 0:
        atomic_write_text(as_path(workdir) / "probe.json", json.dumps(summary, indent=2))
    return summary
