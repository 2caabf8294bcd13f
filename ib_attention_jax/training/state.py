"""The training state: everything a resumed run needs to continue the same trajectory."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    key: jax.Array  # uint32[2] base key; step t uses fold_in(key, t)
    ema: Any = None  # {'params', 'batch_stats'} moving averages, or None

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation, key: jax.Array, ema: bool = False
               ) -> TrainState:
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        copy = lambda t: jax.tree_util.tree_map(jnp.array, t)  # noqa: E731
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                   opt_state=tx.init(params), key=key,
                   ema={"params": copy(params), "batch_stats": copy(batch_stats)} if ema else None)

    def variables(self, use_ema: bool = False) -> dict:
        source = self.ema if use_ema and self.ema is not None else {"params": self.params,
                                                                      "batch_stats": self.batch_stats}
        return {"params": source["params"], "batch_stats": source["batch_stats"]}
