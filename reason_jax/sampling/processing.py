"""Turning logits into a sampled token: temperature, top-k, top-p, greedy.

Dimensions: N rows, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30


def filter_logits(logits_NV, *, temperature, top_k: int | None, top_p):
    """Scaled, truncated logits to sample from (never used for log-probs)."""
    scaled_NV = logits_NV / jnp.maximum(temperature, 1e-6)
    if top_k is not None and top_k > 0:
        kth_N1 = jax.lax.top_k(scaled_NV, top_k)[0][:, -1:]
        scaled_NV = jnp.where(scaled_NV < kth_N1, _NEG, scaled_NV)
    if top_p is not None:
        # Keep the smallest set of tokens whose probability reaches top_p (always >= 1 token).
        sorted_NV = jnp.sort(scaled_NV, axis=-1)[:, ::-1]
        cum_NV = jnp.cumsum(jax.nn.softmax(sorted_NV, axis=-1), axis=-1)
        keep_NV = (cum_NV - jax.nn.softmax(sorted_NV, axis=-1)) < top_p
        cutoff_N1 = jnp.min(jnp.where(keep_NV, sorted_NV, jnp.inf), axis=-1, keepdims=True)
        scaled_NV = jnp.where(scaled_NV < cutoff_N1, _NEG, scaled_NV)
    return scaled_NV


def sample_tokens(key, logits_NV, row_ids_N, *, temperature, top_k, top_p):
    """One token per row. Each row draws from its own key `fold_in(key, row)`, so a row's
    sample does not depend on how rows are laid out over devices. temperature == 0: greedy."""
    filtered_NV = filter_logits(logits_NV, temperature=temperature, top_k=top_k, top_p=top_p)
    keys_N = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids_N)
    sampled_N = jax.vmap(jax.random.categorical)(keys_N, filtered_NV)
    greedy_N = jnp.argmax(logits_NV, axis=-1)
    return jnp.where(temperature > 0, sampled_N, greedy_N).astype(jnp.int32)
