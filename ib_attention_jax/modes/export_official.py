"""``--mode=export_official``: the workdir's latest weights (or ``config.init_from``'s) as an official checkpoint."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from ib_attention_jax.configs import schema
from ib_attention_jax.data.recipes import get_recipe
from ib_attention_jax.errors import ConfigError
from ib_attention_jax.models.registry import get_spec
from ib_attention_jax.modes.restore import NoCheckpointError, check_complete
from ib_attention_jax.runtime.distributed import initialize_distributed
from ib_attention_jax.runtime.paths import as_path
from ib_attention_jax.training.checkpoint import Checkpointer
from ib_attention_jax.training.loop import build_model, init_variables
from ib_attention_jax.training.workdir import open_run


def export_official(config: ml_collections.ConfigDict, workdir: str, output: str | None) -> dict[str, Any]:
    """Writes the workdir's latest weights (or, without a checkpoint, ``config.init_from``'s) as an official
    checkpoint file in the layout of the model's official script. Opens no dataset."""
    from ib_attention_jax.interop.export import export_official as write_official
    from ib_attention_jax.interop.init_from import load_init_weights_and_ema
    from ib_attention_jax.interop.official_layouts import script_for

    initialize_distributed(config)
    if not output:
        raise ConfigError("--mode=export_official needs --output=FILE (the official checkpoint to write)")
    checkpoints = as_path(workdir) / "checkpoints"
    if checkpoints.exists() and Checkpointer(checkpoints).all_steps():
        with open_run(config, workdir, train=False) as run:
            config, source = run.config, str(run.workdir)
    elif config.get("init_from"):
        source = str(config.init_from)
    else:
        raise NoCheckpointError(f"nothing to export: {workdir} holds no checkpoint and --config.init_from is not set")
    num_classes = config.get("num_classes") or get_recipe(config.dataset).num_classes
    model = build_model(config, num_classes)
    image_size = int(schema.resolved_model_kwargs(config).get("image_size", get_spec(config.model).image_size))
    init = init_variables(model, image_size, jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
    variables, ema, report = load_init_weights_and_ema(source, model, init)
    check_complete(report, source, config.model, "exported")
    spec = get_spec(config.model)
    script = script_for(spec.name, spec.family, spec.plain)
    info = dict(report.info)
    written = write_official(model, variables, output, script,
                             ema_variables=ema if script == "cub" and config.get("ema_decay", 0.0) > 0 else None,
                             epoch=int(info.get("epoch", 0) or 0), step=int(info.get("step", info.get("iter", 0)) or 0),
                             learning_rate=float(config.optimizer.learning_rate), passthrough=report.passthrough)
    return {"output": written.path, "script": written.script, "source": source, "keys": written.keys,
            "ema": written.ema}
