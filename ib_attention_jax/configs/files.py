"""Loading a config: a Python file with ``get_config()`` (``FILE.py:ARG`` passes ARG) or a ``config.json``.

The keys of a loaded file are checked against the schema at once, so a typo in a file (``c.batch_sise``)
is an error naming it instead of a key nobody reads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import ml_collections

from ib_attention_jax.configs import schema
from ib_attention_jax.errors import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of ``spec``: ``path/to/config.py``, ``path/to/config.py:ARG`` or a workdir's ``config.json``."""
    path, _, arg = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        config = schema.from_dict(data.get("config", data))
    else:
        module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"config file {path} is neither a Python file with get_config() nor a config.json")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path} has no get_config() function")
        config = module.get_config(arg) if arg else module.get_config()
    schema.check_keys(config, where=f"config file {path}")
    return config
