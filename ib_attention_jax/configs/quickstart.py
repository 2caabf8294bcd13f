"""The quickstart recipe: the small AIB model on the embedded cluttered_digits dataset, on CPU."""

import ml_collections

from ib_attention_jax.configs.base import get_base_config


def quickstart(model: str = "small_aib") -> ml_collections.ConfigDict:
    """Adam 1.5e-3 with cosine decay, batch 64, 4 epochs, beta warmed up over 1000 steps.

    4 epochs at batch 128 reached 88.9% (pointing game 80.0%), at batch 64 95.6% (90.3%):
    a short run needs the extra updates.
    """
    c = get_base_config()
    c.model = model
    c.dataset = "cluttered_digits"
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 4
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1.5e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    # Set in full, as every recipe does: the official KL form and bits, c = 1 (ObjectiveConfig's own defaults
    # are the consistent KL in nats; the quickstart's figures were measured with these).
    c.objective.update(beta=1e-2, info_factor=1.0, kl_form="official", units="bits", vq_coef=0.4, commit_coef=0.1)
    c.beta_warmup_steps = 1000  # the latent starts with KL ~ 320 nats; ramp beta so it does not dominate
    c.checkpoint_every_steps = 500
    c.log_every_steps = 50
    return c
