"""Model configuration for the Llama 3 / Qwen2 / Qwen2.5 / Qwen3 decoder family.

One frozen dataclass describes every supported architecture; the differences between
families are flags (`qkv_bias`, `qk_norm`, `tie_embeddings`, `rope_scaling`), not subclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = ("llama", "qwen2", "qwen3")

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def as_dtype(name_or_dtype: Any) -> Any:
    """Accept 'bfloat16', jnp.bfloat16 or np.dtype and return a jnp dtype."""
    if isinstance(name_or_dtype, str):
        if name_or_dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {name_or_dtype!r}; expected one of {sorted(_DTYPES)}")
        return _DTYPES[name_or_dtype]
    return jnp.dtype(name_or_dtype).type


def dtype_name(dtype: Any) -> str:
    return jnp.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a decoder-only transformer.

    Dimension names follow the legend in `reason_jax/models/transformer.py`.
    """

    vocab_size: int  # V
    dim: int  # D
    num_layers: int  # L
    num_heads: int  # Q
    num_kv_heads: int  # K
    head_dim: int  # H
    mlp_dim: int  # F
    arch: str = "llama"
    rope_theta: float = 10000.0
    # None, or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"} / {"rope_type": "linear", "factor"}.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2/2.5
    o_bias: bool = False  # Llama `attention_bias=True` also biases o_proj
    qk_norm: bool = False  # Qwen3
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; softmax and norms always run in float32
    remat: bool = False  # rematerialise each layer in the backward pass

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; supported: {ARCHITECTURES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        as_dtype(self.param_dtype)
        as_dtype(self.dtype)
        if isinstance(self.rope_scaling, dict):  # frozen: store hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def num_params(self) -> int:
        D, F, V, Q, K, H = (self.dim, self.mlp_dim, self.vocab_size, self.num_heads,
                            self.num_kv_heads, self.head_dim)
        attn = D * Q * H * 2 + D * K * H * 2
        if self.qkv_bias:
            attn += (Q + 2 * K) * H
        if self.o_bias:
            attn += D
        if self.qk_norm:
            attn += 2 * H
        layer = attn + 3 * D * F + 2 * D
        head = 0 if self.tie_embeddings else V * D
        return V * D + self.num_layers * layer + D + head


def tiny_llama(vocab_size: int, **overrides) -> ModelConfig:
    """The built-in task's default policy: a 2-layer Llama, fast on a laptop CPU
    (../shared/NOTES-countdown.md: smaller and faster beats bigger in a fixed budget)."""
    base = dict(vocab_size=vocab_size, dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=32, mlp_dim=384, arch="llama", rope_theta=10000.0, norm_eps=1e-5,
                tie_embeddings=True, max_position_embeddings=64)
    base.update(overrides)
    return ModelConfig(**base)
