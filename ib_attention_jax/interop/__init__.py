"""PyTorch interop: official state_dicts <-> Flax variables, checkpoint files, starting weights, parity checks."""

from ib_attention_jax.interop.export import export_official
from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest, synthetic_state_dict
from ib_attention_jax.interop.init_from import load_init_weights
from ib_attention_jax.interop.load_report import LoadReport
from ib_attention_jax.interop.state_dict import StateDictError, from_state_dict, strip_module_prefix, to_state_dict
from ib_attention_jax.interop.torch_io import extract_state_dict, load_official_checkpoint, save_official_checkpoint

__all__ = ["LoadReport", "StateDictError", "export_official", "extract_state_dict", "from_state_dict",
           "load_init_weights", "load_official_checkpoint", "save_official_checkpoint", "state_dict_from_manifest",
           "strip_module_prefix", "synthetic_state_dict", "to_state_dict"]
