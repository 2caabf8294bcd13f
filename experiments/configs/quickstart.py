"""Quickstart: the small AIB model on the embedded cluttered_digits dataset, on CPU.

    make demo
    # = python -m experiments.main --config=experiments/configs/quickstart.py --workdir=workdir/quickstart

Should reach (2 CPU cores, under 10 minutes): test accuracy (Monte-Carlo) >= 90% and
pointing game >= 80%. With anchors: --config.model=small_aib_qt.
"""

from experiments.configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.model = "small_aib"
    c.dataset = "cluttered_digits"
    # More updates in a short run: 4 epochs at batch 128 reached 88.9% (pointing 80.0%), at 64 95.6% (90.3%).
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 4
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1.5e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.objective.info_factor = 1.0
    c.beta_warmup_steps = 1000  # the latent starts with KL ~ 320 nats; ramp beta so it does not dominate
    c.checkpoint_every_steps = 500
    c.log_every_steps = 50
    return c
