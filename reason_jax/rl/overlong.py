"""DAPO overlong handling: soft length penalty (reward shaping) and the truncation filter.

Dimensions: N rollouts, T response length. Lengths are in tokens.
"""

from __future__ import annotations

import jax.numpy as jnp


def overlong_penalty(lengths_N, *, max_len: int, cache_len: int, factor: float = 1.0):
    """0 up to max_len - cache_len, then linear down to -1 at max_len, -1 beyond; times factor.

    Added to the correctness reward. max_len = 20, cache_len = 4: 16 -> 0, 17 -> -0.25,
    19 -> -0.75, 20 -> -1.
    """
    if cache_len <= 0 or cache_len > max_len:
        raise ValueError(f"need 0 < cache_len <= max_len (got {cache_len}, {max_len})")
    lengths_N = jnp.asarray(lengths_N, jnp.float32)
    soft_start = max_len - cache_len
    ramp_N = (soft_start - lengths_N) / cache_len
    penalty_N = jnp.where(
        lengths_N <= soft_start, 0.0, jnp.where(lengths_N <= max_len, ramp_N, -1.0)
    )
    return factor * penalty_N


def overlong_filter(mask_NT, truncated_N):
    """Drop truncated samples from the loss: their missing ending says nothing about reward."""
    keep_N = 1 - jnp.asarray(truncated_N).astype(mask_NT.dtype)
    return mask_NT * keep_N[:, None]
