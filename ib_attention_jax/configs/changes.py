"""What a restart of a workdir may change: every config key's policy, in one table.

A workdir belongs to one run: its ``config.json`` holds the resolved config of the first start. A restart
with another config compares the two key by key:

* ``REFUSED``: the key decides what the checkpoints hold (the network, its shapes, the optimiser state's
  structure) or which trajectory they continue; a different value is a new run and needs a new workdir.
* ``SWITCH``: refused when it turns on or off (zero <-> non-zero), because that adds or removes state
  (momentum buffers, weight EMA, a decay or clipping transform); a change of its value is reported.
* ``REPORTED``: the run continues from its checkpoint with the new value, and says so (console and a
  ``config_change`` row in ``metrics.jsonl``).
* ``IGNORED``: how this process was launched; never compared.

A key missing from the table (one added to ``base.py`` later) is ``REPORTED``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ib_attention_jax.configs import schema

REFUSED, SWITCH, REPORTED, IGNORED = "refused", "switch", "reported", "ignored"

# key -> (policy, why). "model_kwargs.*" covers every option of the model's builder not listed itself.
POLICY: dict[str, tuple[str, str]] = {
    "model": (REFUSED, "the network the parameters belong to"),
    "model_kwargs.*": (REFUSED, "an option of the network: its shapes, anchors or layers"),
    "model_kwargs.conv_impl": (REPORTED, "how convolutions are computed; every form shares the parameters"),
    "remat": (REPORTED, "what the backward pass recomputes; the parameters and the trajectory are the same"),
    "num_classes": (REFUSED, "the size of the classifier's output"),
    "dataset": (REFUSED, "the labels the classifier learnt and the input position the checkpoint holds"),
    "seed": (REFUSED, "the initialisation and the data order the checkpoint continues"),
    "init_from": (REFUSED, "the weights the run started from"),
    "half_precision": (REFUSED, "the precision the run computes in"),
    "optimizer.name": (REFUSED, "the structure of the optimiser state"),
    "optimizer.momentum": (SWITCH, "SGD without momentum keeps no momentum buffer"),
    "optimizer.weight_decay": (SWITCH, "weight decay is a transform of its own in the optimiser state"),
    "optimizer.anchor_lr_ratio": (SWITCH, "0 freezes the anchors, which then keep no optimiser state"),
    "optimizer.grad_clip_norm": (SWITCH, "clipping is a transform of its own in the optimiser state"),
    "ema_decay": (SWITCH, "the checkpoint holds a weight EMA only when it is on"),
    "coordinator_address": (IGNORED, "launch detail"),
    "num_processes": (IGNORED, "launch detail"),
    "process_id": (IGNORED, "launch detail, different on every host"),
    # Everything below continues from the checkpoint with the new value (listed to be explicit).
    **{key: (REPORTED, "continues from the checkpoint") for key in (
        "data_dir", "train_split", "eval_split", "validation_split", "normalization", "batch_size",
        "eval_batch_size", "num_epochs", "num_steps", "num_workers", "optimizer.learning_rate",
        "optimizer.schedule", "optimizer.nesterov", "optimizer.b1", "optimizer.b2", "optimizer.eps",
        "optimizer.warmup_steps", "optimizer.milestones", "optimizer.gamma", "optimizer.exp_gamma",
        "optimizer.exp_every_epochs", "objective.beta", "objective.info_factor", "objective.kl_form",
        "objective.units", "objective.vq_coef", "objective.commit_coef", "beta_warmup_steps", "num_samples",
        "eval_num_samples", "eval_ema", "parallel", "distributed", "checkpoint_every_steps", "keep_checkpoints",
        "log_every_steps", "eval_every_steps", "tensorboard", "progress", "export_examples")},
}


def policy(key: str) -> tuple[str, str]:
    """(policy, why) of a dotted key."""
    if key in POLICY:
        return POLICY[key]
    section = key.rpartition(".")[0]
    return POLICY.get(f"{section}.*", (REPORTED, "continues from the checkpoint"))


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between the workdir's config and the new one."""

    key: str
    old: Any
    new: Any
    policy: str
    why: str

    @property
    def refused(self) -> bool:
        if self.policy == SWITCH:
            return bool(self.old) != bool(self.new)
        return self.policy == REFUSED

    def describe(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """The value a key has when a config does not hold it: the base config's, the model builder's."""
    defaults = schema.flatten(schema.get_base_config())
    try:
        options = schema.model_options(config.get("model", defaults["model"]))
    except ValueError:  # a model no longer registered: nothing to fill in
        options = {}
    defaults.update({f"{schema.MODEL_KWARGS}.{n}": p.default for n, p in options.items()})
    return defaults


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """Every compared key whose value differs, ``old`` and ``new`` being resolved configs (dicts)."""
    old_flat, new_flat = schema.flatten(old), schema.flatten(new)
    old_defaults, new_defaults = _defaults(old), _defaults(new)
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        kind, why = policy(key)
        if kind == IGNORED:
            continue
        before = old_flat.get(key, old_defaults.get(key))
        after = new_flat.get(key, new_defaults.get(key))
        if _normal(before) != _normal(after):
            changes.append(ConfigChange(key, before, after, kind, why))
    return changes


def run_identity(config: Mapping[str, Any]) -> str:
    """A short id of what a run's checkpoints hold: a hash of its refused keys and of its switches' on/off.

    Written into ``config.json`` at the first start and into every checkpoint, so a run restores and
    prunes only checkpoints of its own (every host computes the same id).
    """
    flat = schema.flatten(config)
    identity = {}
    for key, value in sorted(flat.items()):
        kind = policy(key)[0]
        if kind == REFUSED:
            identity[key] = _normal(value)
        elif kind == SWITCH:
            identity[key] = bool(value)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
