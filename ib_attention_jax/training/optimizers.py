"""Optimisers as the official recipes run them, with the anchors in their own group.

SGD uses PyTorch's coupled weight decay (``g + wd * p`` before momentum), which is
what ``torch.optim.SGD(weight_decay=...)`` does. The anchors of QT models get the base
rate times ``anchor_lr_ratio`` (0 freezes them). What each official script did:

* VGG CIFAR: anchors at the base rate with weight decay 5e-4 (its anchor group missed
  the parameter because of DataParallel's ``module.`` prefix): ratio 1.
* WRN CIFAR: anchors at 1e-4 times the rate, weight decay 5e-4: ratio 1e-4.
* CUB: anchors frozen (``qt_trainable`` defaults to False): ratio 0.
"""

from __future__ import annotations

import dataclasses

import optax
from flax import traverse_util

from ib_attention_jax.training.schedules import make_schedule

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    learning_rate: float = 0.1
    schedule: str = "constant"
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    anchor_lr_ratio: float = 1.0
    anchor_weight_decay: float | None = None  # None: same as weight_decay
    warmup_steps: int = 0
    milestones: tuple[int, ...] = (60, 120, 160)
    gamma: float = 0.2
    exp_gamma: float = 0.97
    exp_every_epochs: int = 2
    grad_clip_norm: float = 0.0  # 0: off

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.anchor_lr_ratio < 0 or self.weight_decay < 0:
            raise ValueError("anchor_lr_ratio and weight_decay must be >= 0")


def anchor_labels(params) -> dict:
    """'anchors' for the quantiser's anchors, 'default' for everything else."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: "anchors" if k[-1] == "anchors" else "default" for k in flat})


def _base(config: OptimizerConfig, schedule: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))  # coupled, as in PyTorch
    if config.name == "sgd":
        parts.append(optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
    else:
        parts.append(optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps))
    return optax.chain(*parts)


def make_optimizer(config: OptimizerConfig, steps_per_epoch: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser and its learning-rate schedule (for logging)."""
    schedule = make_schedule(config.schedule, config.learning_rate, steps_per_epoch, total_steps,
                             warmup_steps=config.warmup_steps, milestones=config.milestones, gamma=config.gamma,
                             exp_gamma=config.exp_gamma, exp_every_epochs=config.exp_every_epochs)
    anchor_wd = config.weight_decay if config.anchor_weight_decay is None else config.anchor_weight_decay
    if config.anchor_lr_ratio == 0:
        anchors = optax.set_to_zero()
    else:
        ratio = config.anchor_lr_ratio
        anchors = _base(config, lambda step: ratio * schedule(step), anchor_wd)
    tx = optax.multi_transform({"default": _base(config, schedule, config.weight_decay), "anchors": anchors},
                               anchor_labels)
    if config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx, schedule


def ema_update(ema, new, decay: float):
    """``ema <- decay * ema + (1 - decay) * new`` leaf by leaf (the official CUB weight EMA).

    optax's Polyak average with step ``1 - decay``: it computes ``(1 - decay) * new + (1 - (1 - decay)) * ema``,
    the same float32 products and sum as the formula above (``1 - (1 - d)`` rounds to ``d`` in float32 for
    the decays used), so the EMA is bit for bit what it was (tests/test_optimizers.py).
    """
    return optax.incremental_update(new, ema, 1.0 - decay)
