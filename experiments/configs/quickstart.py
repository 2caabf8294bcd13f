"""Quickstart: the small AIB model on the embedded cluttered_digits dataset, on CPU.

    make demo
    # = python -m experiments.main --config=experiments/configs/quickstart.py --workdir=workdir/quickstart

Should reach (2 CPU cores, under 10 minutes): test accuracy (Monte-Carlo) >= 90% and
pointing game >= 80%. With anchors: --config.model=small_aib_qt.
"""

from ib_attention_jax.configs.quickstart import quickstart


def get_config():
    return quickstart()
