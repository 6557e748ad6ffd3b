"""The policy model (Llama 3 / Qwen2 / Qwen3 family), HF import/export and tokenizers."""

from reason_jax.models.config import ModelConfig, tiny_llama
from reason_jax.models.hf_config import UnsupportedConfigError, config_from_hf, config_to_hf
from reason_jax.models.hf_weights import export_hf, from_hf, load_state_from_hf
from reason_jax.models.kv_cache import KVCache
from reason_jax.models.transformer import Transformer, init_model, logical_axes

__all__ = [
    "KVCache", "ModelConfig", "Transformer", "UnsupportedConfigError", "config_from_hf",
    "config_to_hf", "export_hf", "from_hf", "init_model", "load_state_from_hf", "logical_axes",
    "tiny_llama",
]
