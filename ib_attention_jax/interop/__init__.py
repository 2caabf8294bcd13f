"""PyTorch interop: official state_dicts <-> Flax variables, checkpoint files, parity checks."""

from ib_attention_jax.interop.state_dict import StateDictError, from_state_dict, strip_module_prefix, to_state_dict
from ib_attention_jax.interop.synthetic import state_dict_from_manifest, synthetic_state_dict
from ib_attention_jax.interop.torch_io import extract_state_dict, load_official_checkpoint, save_official_checkpoint

__all__ = ["StateDictError", "extract_state_dict", "from_state_dict", "load_official_checkpoint",
           "save_official_checkpoint", "state_dict_from_manifest", "strip_module_prefix", "synthetic_state_dict",
           "to_state_dict"]
