"""Learning-rate schedules of the official recipes, as optax schedules of the step.

The official scripts change the learning rate per epoch; here ``steps_per_epoch``
turns that into a function of the optimiser step, so the same step always gets the
same rate (and a resumed run continues the schedule exactly). An epoch has as many
steps as the official loader makes (``data.Recipe.steps_per_epoch``): 391 for CIFAR at
batch 128, whose loaders keep the last partial batch, 374 for CUB at batch 16, which
drops it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "vgg_lambda", "multistep", "exponential", "cosine")


def _epoch(step, steps_per_epoch: int):
    return jnp.floor_divide(step, steps_per_epoch)


def vgg_lambda(base_lr: float, steps_per_epoch: int, peak_lr: float = 0.1, halve_every: int = 25) -> optax.Schedule:
    """The official VGG LambdaLR (VGG-backbone-32/cifar_va.py).

    ``scheduler.step()`` runs at the start of every epoch, so epoch e uses lambda(e + 1).
    With ``--lr 0.01`` (AIB): epoch 0 at 0.01, then ``peak * 0.5^floor((e+1)/halve_every)``;
    with ``--lr 0.001`` (AIB-QT): epoch 0 at 0.001, epoch 1 at 0.01, then the same; any
    other base: ``base * 0.5^floor((e+1)/halve_every)``.
    """

    def schedule(step):
        e = _epoch(step, steps_per_epoch)
        decayed = peak_lr * 0.5 ** jnp.floor_divide(e + 1, halve_every)
        if abs(base_lr - 0.01) < 1e-12:
            return jnp.where(e < 1, 0.01, decayed)
        if abs(base_lr - 0.001) < 1e-12:
            return jnp.where(e < 1, 0.001, jnp.where(e < 2, 0.01, decayed))
        return base_lr * 0.5 ** jnp.floor_divide(e + 1, halve_every)

    return schedule


def multistep(base_lr: float, steps_per_epoch: int, milestones: Sequence[int] = (60, 120, 160),
              gamma: float = 0.2) -> optax.Schedule:
    """The official WRN schedule (PyTorch's MultiStepLR): the rate times ``gamma`` from each milestone epoch on.

    optax's piecewise-constant schedule with a boundary at each milestone's first step; a milestone
    given n times scales by ``gamma ** n``, as MultiStepLR does. Its float32 values equal the closed
    form ``base_lr * gamma ** passed`` bit for bit (tests/test_schedules.py).
    """
    counts = collections.Counter(int(m) for m in milestones)
    return optax.piecewise_constant_schedule(base_lr, {m * steps_per_epoch: gamma ** n for m, n in counts.items()})


EXACT_DECAYS = 1024  # decays of the exponential schedule taken from a float64 table


def exponential(base_lr: float, steps_per_epoch: int, gamma: float = 0.97, every_epochs: int = 2) -> optax.Schedule:
    """The official CUB schedule: ExponentialLR(gamma) stepped after every ``every_epochs`` epochs.

    ``base_lr * gamma^k`` after k decays, the first ``EXACT_DECAYS`` from a table computed in
    float64 and rounded once: in float32, ``gamma ** k`` compounds the rounding of ``gamma``
    (0.97 is 3e-8 off) into a 3e-6 error by k = 99. Later decays continue from the table's end.
    Not ``optax.exponential_decay(staircase=True)``: that is the float32 ``gamma ** k`` (2.9e-6
    off the official float64 rates over the 200 CUB epochs, the schedule parity allows 2.5e-7;
    tests/test_schedules.py shows both).
    """
    table = jnp.asarray(base_lr * np.float64(gamma) ** np.arange(EXACT_DECAYS))

    def schedule(step):
        k = jnp.floor_divide(_epoch(step, steps_per_epoch), every_epochs)
        beyond = jnp.maximum(k - (EXACT_DECAYS - 1), 0)
        return table[jnp.minimum(k, EXACT_DECAYS - 1)] * gamma ** beyond

    return schedule


def make_schedule(name: str, base_lr: float, steps_per_epoch: int, total_steps: int, *,
                  warmup_steps: int = 0, milestones: Sequence[int] = (60, 120, 160), gamma: float = 0.2,
                  exp_gamma: float = 0.97, exp_every_epochs: int = 2) -> optax.Schedule:
    """A schedule by name; an unknown name is a ValueError listing the known ones."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if name == "constant":
        return optax.constant_schedule(base_lr)
    if name == "vgg_lambda":
        return vgg_lambda(base_lr, steps_per_epoch)
    if name == "multistep":
        return multistep(base_lr, steps_per_epoch, milestones, gamma)
    if name == "exponential":
        return exponential(base_lr, steps_per_epoch, exp_gamma, exp_every_epochs)
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else base_lr, base_lr,
                                                  max(warmup_steps, 0), max(total_steps, warmup_steps + 1))
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
