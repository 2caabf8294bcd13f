"""ib_attention_jax: information-bottleneck spatial attention (AIB, Lai et al., IJCAI 2021) in JAX/Flax.

The names a user needs, imported on first use so that ``import ib_attention_jax`` and the models,
objectives and steps need only jax, flax, optax, chex and numpy (the data names need the ``train``
extra: tensorflow-datasets and grain)::

    from ib_attention_jax import AIBHead, ObjectiveConfig, aib_loss, make_train_step
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "create_model": "ib_attention_jax.models.registry",
    "get_spec": "ib_attention_jax.models.registry",
    "list_models": "ib_attention_jax.models.registry",
    "AIBClassifier": "ib_attention_jax.models.aib",
    "ModelOutput": "ib_attention_jax.models.aib",
    "AIBHead": "ib_attention_jax.models.head",
    "GlobalPoolEncoder": "ib_attention_jax.models.head",
    "VariationalAttention": "ib_attention_jax.models.attention",
    "ConvMeanHead": "ib_attention_jax.models.attention",
    "AnchorQuantizer": "ib_attention_jax.models.quantization",
    "GaussianLatent": "ib_attention_jax.models.bottleneck",
    "MLPDecoder": "ib_attention_jax.models.bottleneck",
    # objective
    "ObjectiveConfig": "ib_attention_jax.objectives",
    "aib_loss": "ib_attention_jax.objectives",
    "official_objective": "ib_attention_jax.objectives",
    # training step (single device under jax.jit, or data-parallel with axis_name)
    "StepConfig": "ib_attention_jax.training.step",
    "compute_loss": "ib_attention_jax.training.step",
    "make_train_step": "ib_attention_jax.training.step",
    "make_eval_step": "ib_attention_jax.evaluation.step",
    "TrainState": "ib_attention_jax.training.state",
    # data (the train extra)
    "Recipe": "ib_attention_jax.data.recipes",
    "register_recipe": "ib_attention_jax.data.recipes",
    "normalize_images": "ib_attention_jax.data.images",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Imports an exported name's module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ib_attention_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
