"""Translate Hugging Face `config.json` to and from `ModelConfig`.

Accepts both the form of hub checkpoints (`rope_theta`, `rope_scaling`) and the one
transformers 5 writes (`rope_parameters`). Anything we would silently compute differently
is rejected with the offending key named.
"""

from __future__ import annotations

from typing import Any

from reason_jax.models.config import ModelConfig
from reason_jax.models.rope import SUPPORTED_ROPE_TYPES

_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class UnsupportedConfigError(ValueError):
    pass


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise UnsupportedConfigError(
            "config key rope_parameters: per-layer-type rope parameters are not supported")
    params = dict(params or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = dict(hf.get("rope_scaling") or {})
    scaling.update(params)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedConfigError(
            f"config key rope_scaling.rope_type={rope_type!r} is not supported; "
            f"supported: {SUPPORTED_ROPE_TYPES}")
    if rope_type == "default":
        return theta, None
    scaling["rope_type"] = rope_type
    scaling.pop("type", None)
    keep = {"rope_type", "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}
    return theta, {k: v for k, v in scaling.items() if k in keep}


def config_from_hf(hf: dict[str, Any], *, param_dtype: str = "float32",
                   dtype: str = "float32") -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in _HF_CLASSES:
        raise UnsupportedConfigError(
            f"config key model_type={model_type!r}: unknown architecture; supported: "
            f"{sorted(_HF_CLASSES)}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"config key hidden_act={act!r} is not supported (only silu)")
    if hf.get("mlp_bias"):
        raise UnsupportedConfigError("config key mlp_bias=True is not supported")
    if hf.get("use_sliding_window"):
        raise UnsupportedConfigError("config key use_sliding_window=True is not supported")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedConfigError("config key partial_rotary_factor != 1 is not supported")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size"):
        if key not in hf:
            raise UnsupportedConfigError(f"config.json is missing required key {key!r}")
    theta, scaling = _rope(hf)
    heads = int(hf["num_attention_heads"])
    attention_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        mlp_dim=int(hf["intermediate_size"]),
        arch=model_type,
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type != "qwen2" and attention_bias,
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        param_dtype=param_dtype,
        dtype=dtype,
    )


def config_to_hf(cfg: ModelConfig, *, torch_dtype: str = "float32",
                 eos_token_id: Any = None, bos_token_id: Any = None) -> dict[str, Any]:
    if cfg.arch == "qwen2" and cfg.o_bias:
        raise UnsupportedConfigError("qwen2 has no o_proj bias; cannot export o_bias=True")
    if cfg.arch != "qwen2" and cfg.qkv_bias != cfg.o_bias:
        raise UnsupportedConfigError(
            f"{cfg.arch} biases q/k/v and o together (attention_bias); got qkv_bias="
            f"{cfg.qkv_bias}, o_bias={cfg.o_bias}")
    # The HF classes fix these per architecture; exporting anything else would write a
    # checkpoint that transformers computes differently (or that we cannot load back).
    if cfg.qk_norm != (cfg.arch == "qwen3"):
        raise UnsupportedConfigError(
            f"{cfg.arch} {'always' if cfg.arch == 'qwen3' else 'never'} has q/k norm; "
            f"cannot export qk_norm={cfg.qk_norm}")
    if cfg.arch == "qwen2" and not cfg.qkv_bias:
        raise UnsupportedConfigError("qwen2 always has q/k/v biases; cannot export qkv_bias=False")
    hf = {
        "architectures": [_HF_CLASSES[cfg.arch]],
        "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias if cfg.arch != "qwen2" else True,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }
    if cfg.arch == "llama":
        hf["mlp_bias"] = False
    if eos_token_id is not None:
        hf["eos_token_id"] = eos_token_id
    if bos_token_id is not None:
        hf["bos_token_id"] = bos_token_id
    return hf
