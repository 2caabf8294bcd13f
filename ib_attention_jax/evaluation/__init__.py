"""Evaluation: Monte-Carlo and mean accuracy, localisation of attention maps, overlays."""

from ib_attention_jax.evaluation.localization import box_area_fraction, energy_in_box, pointing_game, upsample_map
from ib_attention_jax.evaluation.overlays import colorize, overlay, save_attention_grid, save_attention_maps

__all__ = ["box_area_fraction", "colorize", "energy_in_box", "overlay", "pointing_game", "save_attention_grid",
           "save_attention_maps", "upsample_map"]
