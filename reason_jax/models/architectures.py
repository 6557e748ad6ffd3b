"""Named architectures: the shapes of well-known checkpoints, as their HF `config.json` keys.

A pod is planned before any weights are downloaded: `model.arch=qwen2.5-math-1.5b` gives the
dry run (`bench train-step --dry-run`) and a random-init smoke run the real model's shapes
with no checkpoint, tokenizer or network. Values are copied from each model's published
config.json; a checkpoint's own config.json (`model.init_from`) always wins over a name.
"""

from __future__ import annotations

from typing import Any

from reason_jax.models.config import ModelConfig
from reason_jax.models.hf_config import config_from_hf

_QWEN2 = dict(model_type="qwen2", hidden_act="silu", attention_bias=True, rms_norm_eps=1e-6)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Qwen/Qwen2.5-Math-1.5B
    "qwen2.5-math-1.5b": dict(
        _QWEN2, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=True),
    # Qwen/Qwen2.5-Math-7B
    "qwen2.5-math-7b": dict(
        _QWEN2, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False),
    # Qwen/Qwen2.5-1.5B
    "qwen2.5-1.5b": dict(
        _QWEN2, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True),
}


def architecture(name: str, *, param_dtype: str = "float32",
                 dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a named architecture."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model.arch {name!r}; known: {sorted(ARCHITECTURES)} (or set "
                         "model.init_from to a folder with the checkpoint's config.json)")
    return config_from_hf(dict(ARCHITECTURES[name]), param_dtype=param_dtype, dtype=dtype)
