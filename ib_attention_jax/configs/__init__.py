"""Experiment configs as ``ml_collections.ConfigDict`` builders.

``base.get_base_config()`` holds every key a run reads, with its default;
``official`` builds the recipe of each official experiment, ``quickstart`` the small
CPU recipe. The files under ``experiments/configs/`` pick one of these, so a config
file copied anywhere works with the installed package.
"""
