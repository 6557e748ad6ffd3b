"""Rotary position embeddings (half-split layout, as in HF Llama/Qwen), with Llama 3 scaling.

Dimensions: B batch, T tokens, Q heads, H head dim.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    """Per-pair inverse frequencies [H/2], computed on the host in float64 then cast once."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope_scaling type {rope_type!r} (config key rope_scaling/rope_parameters);"
            f" supported: {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, blended, scaled)
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions_BT: jnp.ndarray, inv_freq_P: np.ndarray):
    """cos and sin of position * inv_freq, `[B, T, 1, H/2]` each (broadcast over heads)."""
    angles_BTP = positions_BT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_P)
    return jnp.cos(angles_BTP)[:, :, None, :], jnp.sin(angles_BTP)[:, :, None, :]


def rotate(x_BTQH: jnp.ndarray, cos_BT1P: jnp.ndarray, sin_BT1P: jnp.ndarray) -> jnp.ndarray:
    """Rotate pairs (i, i + H/2) of every head by the angles whose cos/sin are given."""
    x = x_BTQH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BT1P - x2 * sin_BT1P, x2 * cos_BT1P + x1 * sin_BT1P], axis=-1)
    return out.astype(x_BTQH.dtype)


def apply_rope(x_BTQH: jnp.ndarray, positions_BT: jnp.ndarray, inv_freq_P: np.ndarray) -> jnp.ndarray:
    """Rotate pairs (i, i + H/2) of every head by angle position * inv_freq[i]."""
    return rotate(x_BTQH, *rope_cos_sin(positions_BT, inv_freq_P))
