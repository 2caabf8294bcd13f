"""``python -m experiments.main``: the same command line as ``ib-attention`` (ib_attention_jax/cli.py)."""

from ib_attention_jax.cli import main

if __name__ == "__main__":
    main("experiments.main")
