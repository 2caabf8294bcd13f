"""The command line, ``ib-attention`` (also ``python -m experiments.main``): train, evaluate, export.

    ib-attention --config=experiments/configs/quickstart.py --workdir=workdir/quickstart
    ib-attention --config=... --workdir=... --config.batch_size=64 --config.model_kwargs.latent_dim=32
    ib-attention --workdir=workdir/quickstart --mode=evaluate      # the workdir's own config.json
    ib-attention --workdir=... --mode=export_attention --num_images=20
    ib-attention --workdir=... --mode=linear_probe [--config.probe.dataset=stl10]   # probe.json
    ib-attention --workdir=... --mode=report                         # report.html, plots inside
    ib-attention --config=... --workdir=... --mode=evaluate --config.init_from=best_acc.tar  # official weights
    ib-attention --config=... --workdir=... --mode=export_official --output=OUT.tar  # for the official scripts

``--config.KEY=VALUE`` sets any key of ``ib_attention_jax/configs/base.py`` and
``--config.model_kwargs.NAME=VALUE`` any option of the model's builder; an unknown key is an error
naming the closest known ones. Without ``--config`` the workdir's own ``config.json`` is used. Errors
the user can fix (a bad config, a workdir of another run, a full disk, ...) print one message and exit 1.
During training the first Ctrl-C saves a checkpoint and exits 0; a second one (or one outside the
training loop) exits 130 at once.
"""

from __future__ import annotations

import errno
import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from ib_attention_jax import cpu_memory
from ib_attention_jax.configs import schema
from ib_attention_jax.errors import ConfigError, UserError
from ib_attention_jax.modes import MODES

_CONFIG = flags.DEFINE_string(
    "config", None, "experiment config: a Python file with get_config() (FILE.py:ARG passes ARG) or a config.json; "
    "default: the workdir's own config.json. Override keys with --config.KEY=VALUE")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and outputs (one run each)")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "what to do")
_OUTPUT = flags.DEFINE_string("output", None, "export_official: the official checkpoint file to write")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 20, "export_attention: how many test images")
_VERBOSE = flags.DEFINE_bool("verbose", False, "log at INFO level (Orbax, tfds and the loop)")
flags.mark_flags_as_required(["workdir"])

_OVERRIDES: list[tuple[str, str]] = []  # the --config.KEY=VALUE arguments, taken out before absl parses
_FS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def load_config(config_file: str | None, workdir: str, overrides: list[tuple[str, str]]):
    """The config of this command: the file (or the workdir's config.json) with the overrides applied."""
    from ib_attention_jax.configs.files import load_config_file
    from ib_attention_jax.training.workdir import CONFIG_FILE, load_workdir_config

    if config_file:
        config = load_config_file(config_file)
    else:
        config = load_workdir_config(workdir)
        if config is None:
            raise ConfigError(f"--config is needed: {workdir} holds no {CONFIG_FILE} (no run was started there yet)")
    return schema.apply_overrides(config, overrides)


def _run() -> dict:
    config = load_config(_CONFIG.value, _WORKDIR.value, _OVERRIDES)
    schema.check_config(config)  # before the heavy imports: a bad config fails in a second or two
    from ib_attention_jax.modes import run_mode  # joins a multi-host run first, whatever the mode

    return run_mode(_MODE.value, config, _WORKDIR.value, output=_OUTPUT.value, num_images=_NUM_IMAGES.value)


def _fail(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _main(argv) -> None:
    del argv
    level = logging.INFO if _VERBOSE.value else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.INFO if _VERBOSE.value else absl_logging.WARNING)
    try:
        summary = _run()
    except UserError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _fail("stopped by Ctrl-C; nothing was saved since the last checkpoint", 130)
    except OSError as err:
        if err.errno not in _FS_ERRORS:
            raise
        _fail(f"{err.strerror}: {err.filename or _WORKDIR.value}")
    print(json.dumps(summary, indent=2))


def main(module: str = "ib_attention_jax.cli") -> None:
    """Entry point: restarts with huge pages where that helps (see cpu_memory), then runs the mode."""
    cpu_memory.reexec_with_huge_pages(module, sys.argv[1:])
    try:
        argv, overrides = schema.split_config_overrides(sys.argv)
    except ConfigError as err:
        _fail(str(err), 2)
    _OVERRIDES[:] = overrides
    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
