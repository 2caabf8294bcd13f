"""The command line's modes (``--mode=``), each also a library function: the one layer that combines
training, checkpoints and evaluation.

``training/`` trains, ``evaluation/`` measures a state it is given, ``runtime/`` is what both use; a mode
opens a workdir, restores or trains its weights and writes the mode's outputs. Every mode first joins the
multi-host run the config describes (``runtime.distributed.initialize_distributed``), here in
:func:`run_mode` before it dispatches and again in each mode's own entry point, so a mode called from
Python starts the same way as from the command line.

    train             modes/train.py           train_and_evaluate, summary.json
    evaluate          modes/evaluate.py        eval.json of the latest checkpoint (or config.init_from)
    export_attention  modes/export_attention.py  PNGs of test images and their maps
    export_official   modes/export_official.py   an official checkpoint file
    linear_probe      modes/probe.py           probe.json
    report            modes/report.py          report.html
    (seeded comparisons of many runs: modes/compare.py, ``python -m experiments.compare``)
"""

from __future__ import annotations

from typing import Any

import ml_collections

MODES = ("train", "evaluate", "export_attention", "export_official", "linear_probe", "report")


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str, *, output: str | None = None,
             num_images: int = 20) -> dict[str, Any]:
    """Runs ``mode`` (one of :data:`MODES`) on ``workdir`` and returns its summary.

    ``output``: export_official's file; ``num_images``: export_attention's count. The modes are imported
    here, so a bad config has failed before the heavy imports."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from ib_attention_jax.runtime.distributed import initialize_distributed

    initialize_distributed(config)
    if mode == "train":
        from ib_attention_jax.modes.train import train

        return train(config, workdir)
    if mode == "evaluate":
        from ib_attention_jax.modes.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(config, workdir)
    if mode == "export_attention":
        from ib_attention_jax.modes.export_attention import export_attention

        return export_attention(config, workdir, num_images)
    if mode == "export_official":
        from ib_attention_jax.modes.export_official import export_official

        return export_official(config, workdir, output)
    if mode == "linear_probe":
        from ib_attention_jax.modes.probe import linear_probe

        return linear_probe(config, workdir)
    from ib_attention_jax.modes.report import run_report

    return run_report(config, workdir)
