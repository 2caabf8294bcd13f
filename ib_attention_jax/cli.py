"""The command line, ``ib-attention`` (also ``python -m experiments.main``): train, evaluate, export.

    ib-attention --config=experiments/configs/quickstart.py --workdir=workdir/quickstart
    ib-attention --config=... --workdir=... --config.batch_size=64 --config.seed=1
    ib-attention --config=... --workdir=... --mode=evaluate
    ib-attention --config=... --workdir=... --mode=export_attention --num_images=20
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ib_attention_jax import cpu_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and outputs")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "export_attention"], "what to do")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 20, "export_attention: how many test images")
_VERBOSE = flags.DEFINE_bool("verbose", False, "log at INFO level (Orbax, tfds and the loop)")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv) -> None:
    del argv
    from ib_attention_jax.training import run_modes  # after flag parsing: --help stays fast

    level = logging.INFO if _VERBOSE.value else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.INFO if _VERBOSE.value else absl_logging.WARNING)
    config, workdir = _CONFIG.value, _WORKDIR.value
    if _MODE.value == "train":
        summary = run_modes.train(config, workdir)
    elif _MODE.value == "evaluate":
        summary = run_modes.evaluate_checkpoint(config, workdir)
    else:
        summary = run_modes.export_attention(config, workdir, _NUM_IMAGES.value)
    print(json.dumps(summary, indent=2))


def main(module: str = "ib_attention_jax.cli") -> None:
    """Entry point: restarts with huge pages where that helps (see cpu_memory), then runs the mode."""
    cpu_memory.reexec_with_huge_pages(module, sys.argv[1:])
    app.run(_main)


if __name__ == "__main__":
    main()
