"""Evaluation: the eval step, Monte-Carlo and mean accuracy, localisation of attention maps, overlays.

The names below are loaded on first use, so ``evaluation.step`` (the eval step, core dependencies only)
imports without the overlays' PIL.
"""

import importlib

_EXPORTS = {"box_area_fraction": "localization", "energy_in_box": "localization", "pointing_game": "localization",
            "upsample_map": "localization", "colorize": "overlays", "overlay": "overlays",
            "save_attention_grid": "overlays", "save_attention_maps": "overlays"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
