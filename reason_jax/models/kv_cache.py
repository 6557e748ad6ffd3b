"""The decoding KV cache, laid out for group sampling.

A group of G completions of one prompt shares that prompt's keys and values, so the cache has
two parts:
  * the *prefix*: keys/values of the B prompts, `[L, B, S, K, H]`, written once by prefill and
    read by all G rows of the group (never copied G times: decode reads it once per group);
  * the *decode* part: per-row keys/values of generated tokens, `[L, N, T, K, H]`, N = B*G,
    preallocated for `max_new_tokens` and written in place at `index` (the buffer is donated
    through the sampler's while_loop, so XLA updates it without copies).

Dimensions: L layers, B prompts, G group size, N = B*G rows, S prompt slots, T decode slots,
K key/value heads, H head dim.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    prefix_k_LBSKH: jnp.ndarray
    prefix_v_LBSKH: jnp.ndarray
    prefix_valid_BS: jnp.ndarray  # bool: real prompt token (left padding is False)
    k_LNTKH: jnp.ndarray
    v_LNTKH: jnp.ndarray
    index: jnp.ndarray  # int32 scalar: decode slots [0, index) are filled
    group_size: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    def from_prefix(cls, k_LBSKH, v_LBSKH, valid_BS, *, group_size: int, max_new_tokens: int,
                    dtype=None) -> "KVCache":
        """Empty decode slots for N = B * group_size rows after a prefill of B prompts."""
        L, B, _, K, H = k_LBSKH.shape
        dtype = dtype or k_LBSKH.dtype
        shape = (L, B * group_size, max_new_tokens, K, H)
        return cls(
            prefix_k_LBSKH=k_LBSKH,
            prefix_v_LBSKH=v_LBSKH,
            prefix_valid_BS=valid_BS.astype(bool),
            k_LNTKH=jnp.zeros(shape, dtype),
            v_LNTKH=jnp.zeros(shape, dtype),
            index=jnp.zeros((), jnp.int32),
            group_size=group_size,
        )

    @property
    def num_decode_slots(self) -> int:
        return self.k_LNTKH.shape[2]
