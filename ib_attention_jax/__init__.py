"""ib_attention_jax: information-bottleneck spatial attention (AIB, Lai et al., IJCAI 2021) in JAX/Flax."""

from ib_attention_jax.models import create_model, get_spec, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "get_spec", "list_models", "__version__"]
