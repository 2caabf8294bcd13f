"""The backend the models are traced for: the one rule that picks the CPU forms of convolution and pooling.

XLA's CPU convolution and select-and-scatter (a max-pool's gradient) measured several times slower
than PyTorch's, so on CPU the models compute them in other forms (:mod:`ib_attention_jax.models.conv`,
:func:`ib_attention_jax.models.layers.max_pool`); on GPU and TPU they use XLA's own.
"""

from __future__ import annotations

import jax


def platform() -> str:
    """JAX's default backend (``"cpu"``, ``"gpu"``, ``"tpu"``), read when a model is traced."""
    return jax.default_backend()


def on_cpu() -> bool:
    """Whether the models are traced for the CPU backend."""
    return platform() == "cpu"
