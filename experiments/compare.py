"""``python -m experiments.compare --preset=NAME --seeds=0,1,2 --workdir=DIR``: seeded comparisons.

The presets and the runner are in ``ib_attention_jax/modes/compare.py``.
"""

import sys

from ib_attention_jax import cpu_memory
from ib_attention_jax.modes.compare import main

if __name__ == "__main__":
    cpu_memory.reexec_with_huge_pages("experiments.compare", sys.argv[1:])
    sys.exit(main())
