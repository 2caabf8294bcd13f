"""Rematerialisation of the backbone's blocks (``--config.remat``): less activation memory for a larger batch.

``with_remat(model, policy)`` is the same model (same parameters, same outputs, same gradients) whose
blocks are wrapped in ``flax.linen.checkpoint`` with a ``jax.checkpoint`` policy, so the backward pass
recomputes what the forward pass did not keep:

* ``"none"``: everything the backward pass needs is kept (the default).
* ``"full"``: a block keeps only its input; its activations are recomputed in the backward pass (about
  one more forward pass of compute; activation memory ~ one block's plus the block inputs).
* ``"dots_saveable"``: a block keeps the outputs of its convolutions and matrix products and recomputes the
  element-wise work after them (BatchNorm, ReLU, modulation): less memory for little compute.

The blocks are the children of the model's parts: every submodule a registered model holds as a field
(``front``, ``encoder``, ``trunk``, ``attention``, ...) is a part, and each module such a part calls directly
(``front/conv1``, ``encoder/group2``, ...) is a block, whatever the architecture. Noise and the attention
sampling happen in the parts themselves and are never recomputed.

XLA's CPU compiler removes the recomputation again (the compiled train step has the same convolutions and
the same ``compile().memory_analysis()`` temporary size with every policy), so the option changes memory
only where XLA keeps it: GPU and TPU.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ib_attention_jax.errors import ConfigError

POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
_inside_block = contextvars.ContextVar("inside_rematerialised_block", default=False)


def _is_array(value: Any) -> bool:
    return isinstance(value, jax.Array | np.ndarray)


def _remat_blocks(policy: Callable) -> Callable:
    """A flax method interceptor that runs every block's ``__call__`` under ``nn.checkpoint(policy)``.

    Arguments that are not arrays (``train=True``, ``num_samples=4``, None) are static, as the blocks
    branch on them in Python.
    """

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if _inside_block.get() or context.method_name != "__call__" or len(module.path) != 2:
            return next_fun(*args, **kwargs)
        names = tuple(kwargs)
        values = tuple(args) + tuple(kwargs[n] for n in names)
        n_args = len(args)
        static = tuple(i + 1 for i, v in enumerate(values) if not _is_array(v))  # 0 is the module

        def block(mdl, *vals):
            token = _inside_block.set(True)  # the block's own submodules run inside this checkpoint
            try:
                return mdl(*vals[:n_args], **dict(zip(names, vals[n_args:], strict=True)))
            finally:
                _inside_block.reset(token)

        return nn.checkpoint(block, policy=policy, static_argnums=static)(module, *values)

    return interceptor


def with_remat(model: nn.Module, policy: str) -> nn.Module:
    """``model`` with its blocks rematerialised by ``policy`` (one of :data:`POLICIES`); ``"none"``: ``model``.

    The result is an instance of a subclass of ``model``'s class with the same fields, name and parameter
    tree, so checkpoints, weight loading and evaluation treat it as the model itself.
    """
    if policy not in POLICIES:
        raise ConfigError(f"remat={policy!r} is not one of {', '.join(POLICIES)}")
    if POLICIES[policy] is None:
        return model
    cls, interceptor = type(model), _remat_blocks(POLICIES[policy])

    def __call__(self, *args, **kwargs):
        with nn.intercept_methods(interceptor):
            return cls.__call__(self, *args, **kwargs)

    rematted = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                           "__doc__": cls.__doc__, "remat_policy": policy})
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return rematted(**fields)
