"""Parity of the learning-rate schedules with the official ones (the schedules fixture).

The fixture holds the learning rate of every param group during every epoch of the four
official recipes, read from the official scheduler objects stepped as the scripts step
them. Here each recipe's official experiment config builds its optimiser schedule (with
the official epoch length: 391 steps at CIFAR's batch 128, 374 at CUB's 16); the rate of
every step of every epoch is compared with the official rate of that epoch and group,
relative error within ``LR_TOL``. Group 1 is the anchors' group: ``anchor_lr_ratio`` x
the base rate here; where the official group is empty (the VGG QT script's anchor group
missed the anchors, which train in group 0) it is not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ib_attention_jax.configs import official
from ib_attention_jax.interop.train_parity import LR_TOL, ClassReport, official_trainer
from ib_attention_jax.interop.train_records import ClassResult

# official recipe -> (the config that runs it, whether its group 1 holds parameters)
RECIPES: dict[str, tuple[Callable[[], ml_collections.ConfigDict], bool]] = {
    "vgg_aib_lr0.01": (lambda: official.cifar_vgg("cifar10"), False),
    "vgg_aib_qt_lr0.001": (lambda: official.cifar_vgg("cifar10", quantized=True), False),
    "wrn_multistep": (lambda: official.cifar_wrn("cifar10", quantized=True), True),
    "cub_exponential": (lambda: official.cub("vgg16"), False),
}


def is_schedules_manifest(manifest: Mapping[str, Any]) -> bool:
    return "lr" in manifest and "recipes" in manifest


def rates_per_step(schedule, steps: int) -> np.ndarray:
    """The schedule's rate at steps 0..steps-1 (as the optimiser computes it: traced, default dtype)."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(steps)))


def check_recipe(recipe: str, official_lr: np.ndarray) -> ClassResult:
    """One recipe: our rate at every step of every epoch against the official (epochs, groups) table."""
    if recipe not in RECIPES:
        return ClassResult(recipe, 0, float("inf"), "no config runs this official recipe", float("inf"), LR_TOL, None)
    build, anchors_grouped = RECIPES[recipe]
    config = build()
    trainer = official_trainer(config.model, config.dataset)
    epochs, groups = official_lr.shape
    spe = trainer.steps_per_epoch
    base = rates_per_step(trainer.schedule, epochs * spe).reshape(epochs, spe).astype(np.float64)
    ours = [base] + [trainer.anchor_lr_ratio * base] * (groups - 1)
    errors, where = [], []
    for g in range(groups if anchors_grouped else 1):
        ref = official_lr[:, g][:, None]
        err = np.abs(ours[g] - ref) / np.abs(ref)  # (epochs, steps per epoch)
        errors.append(err.max(axis=1))
        where += [f"epoch {e} group {g} ({spe} steps)" for e in range(epochs)]
    errors = np.concatenate(errors)
    worst = int(np.argmax(errors))
    return ClassResult(recipe, len(errors), float(errors[worst]), where[worst], float(np.median(errors)), LR_TOL,
                       None)


def check_schedules(manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray], fixture: str) -> ClassReport:
    """Every recipe of the schedules manifest (``lr[recipe]``: epochs x groups) against our schedules."""
    classes = []
    for recipe in manifest["recipes"]:
        if recipe not in refs:
            classes.append(ClassResult(recipe, 0, float("inf"), "listed by the manifest, absent from the npz",
                                       float("inf"), LR_TOL, None))
            continue
        classes.append(check_recipe(recipe, np.asarray(refs[recipe], np.float64)))
    title = ("learning rate of every step of every epoch, official configs against the official schedulers "
             "(one class per recipe, n = epochs x compared groups)")
    return ClassReport(fixture, title, classes)
