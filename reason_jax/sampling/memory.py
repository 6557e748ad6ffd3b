"""Decode-cache memory per device, and the number of decode slots R a K/V budget allows.

The sampler's cache (`reason_jax.models.KVCache`) is a prefix table of the B prompts,
`2·L·B·S·K·H` elements, plus the decode cache of R slots, `2·L·R·T·K·H` elements. Prompts
and slots are split over the data-parallel axes (P shards), KV heads over `tensor` when it
divides them. Everything here is computed from shapes: nothing is allocated.

Dimensions: L layers, B prompts, G group, N = B*G samples, R slots, S prompt bucket,
T max new tokens, K KV heads, H head dim, P data-parallel shards.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

GIB = 1 << 30


def _ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _token_bytes(model_cfg, *, tensor: int, dtype: Any) -> int:
    """K + V bytes of one token over all layers, on one device."""
    K = model_cfg.num_kv_heads
    k_local = K // tensor if tensor > 1 and K % tensor == 0 else K
    itemsize = jnp.dtype(dtype or model_cfg.dtype).itemsize
    return 2 * model_cfg.num_layers * k_local * model_cfg.head_dim * itemsize


def kv_cache_bytes(model_cfg, *, batch_size: int, prompt_len: int, num_slots: int,
                   max_new_tokens: int, data_shards: int = 1, tensor: int = 1,
                   dtype: Any = None) -> dict[str, int]:
    """Per-device bytes of the sampler's cache: `prefix_bytes` (B/P prompts x S) and
    `ring_bytes` (the decode slots' cache, R/P slots x T). With R = N: the lock-step cache."""
    per = _token_bytes(model_cfg, tensor=tensor, dtype=dtype)
    prefix = per * _ceil_div(batch_size, data_shards) * int(prompt_len)
    ring = per * _ceil_div(num_slots, data_shards) * int(max_new_tokens)
    return {"prefix_bytes": prefix, "ring_bytes": ring, "total_bytes": prefix + ring}


def slots_for_kv_budget(model_cfg, kv_cache_gb: float, *, batch_size: int, group_size: int,
                        prompt_len: int, max_new_tokens: int, data_shards: int = 1,
                        tensor: int = 1, dtype: Any = None) -> int:
    """R, the number of decode slots (global, a multiple of `data_shards`, at most N) whose
    cache fits in `kv_cache_gb` GiB per device after the prefix table.

    Only K/V are counted (weights, activations and the [N, T] outputs are not). Raises
    ValueError if not even one slot per shard fits."""
    N = int(batch_size) * int(group_size)
    P = max(int(data_shards), 1)
    per = _token_bytes(model_cfg, tensor=tensor, dtype=dtype)
    prefix = per * _ceil_div(batch_size, P) * int(prompt_len)
    budget = float(kv_cache_gb) * GIB
    slot = per * int(max_new_tokens)
    local = math.floor((budget - prefix) / slot) if budget > prefix else 0
    if local < 1:
        raise ValueError(
            f"kv_cache_gb={kv_cache_gb} GiB per device holds no decode slot: the prefix table "
            f"takes {prefix / GIB:.3f} GiB and one slot of {max_new_tokens} tokens "
            f"{slot / GIB:.4f} GiB")
    return min(local * P, _ceil_div(N, P) * P)


def resolve_num_slots(num_samples: int, *, data_shards: int = 1, max_rows: int | None = None,
                      budget_rows: int | None = None) -> int:
    """R from `max_rows` and/or a budget's R (the smaller wins; neither: R = N), rounded up to
    a multiple of the shards (every shard gets the same number of slots) and capped at N."""
    P = max(int(data_shards), 1)
    R = int(num_samples)
    for cap in (max_rows, budget_rows):
        if cap is not None:
            if int(cap) < 1:
                raise ValueError(f"the number of decode slots must be >= 1, got {cap}")
            R = min(R, int(cap))
    return min(_ceil_div(R, P) * P, int(num_samples))
