"""The decode KV cache: a prefix table shared by each prompt's samples, and R decode slots.

Continuous batching decodes the N = B*G samples of a rollout in R <= N *slots*; a slot that
finishes a sample takes the next waiting one. The cache therefore has two parts:

  * the **prefix table**: keys/values of the B prompts, written once by prefill. The G
    samples of a prompt never copy them: a slot reads its prompt's rows by index
    (`slot_prompt_R`). Memory: 2·L·B·S·K·H elements, whatever R is.
  * the **slot cache**: per-slot keys/values of the current sample's generated tokens, T
    columns (a sample feeds back at most T - 1 tokens): the sample's token j sits in column j
    (one scatter per step writes every slot's column in place), and a slot sees columns
    0..fed, so taking a new sample clears nothing: it restarts at column 0. Memory:
    2·L·R·T·K·H elements, R/N of a lock-step cache.

Layouts are the ones the decode attention dots read, batch dimensions (slot, KV head) first,
so no step transposes a cache: keys `[R, K, H, T]` (scores contract H), values `[R, K, T, H]`
(the value dot contracts T); the prefix table likewise `[B, K, H, S]` / `[B, K, S, H]`. Each
layer is its own array (a tuple over layers, not one `[L, ...]` array): on XLA:CPU slicing a
layer out of a stacked cache copies the whole layer every step.

A layer's slot cache may be split into n chunks of T/n columns (separate arrays, for the same
reason). Attention reads a chunk only if some slot's sample reaches into it (`lax.cond` on the
largest fed count): lock-step decoding reads on average (n + 1) / 2n of the cache, and slots
whose samples are all short skip the later chunks.

Sharding: with P data-parallel shards (the mesh's data axes), prompts, samples and slots are
split into P contiguous blocks; a slot only ever reads prompts of its own block and
`slot_prompt_R` indexes within that block, so the per-slot prefix gather never crosses
devices. `group_size > 0` marks lock-step decoding (R = N, slot r always decodes a sample of
prompt r // G): attention then reads each prompt's prefix rows once for its G slots instead
of gathering a copy per slot.

Dimensions: L layers, B prompts, G group size, N = B*G samples, R slots, S prompt slots,
T max new tokens (= slot cache columns), K key/value heads, H head dim, P shards.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    prefix_k_BKHS: tuple  # one [B, K, H, S] array per layer
    prefix_v_BKSH: tuple  # one [B, K, S, H] array per layer
    prefix_valid_BS: jnp.ndarray  # bool: real prompt token (left padding is False)
    k_RKHT: tuple  # per layer, the T columns as n chunk arrays [R, K, H, T/n]
    v_RKTH: tuple  # per layer, n chunk arrays [R, K, T/n, H]
    slot_prompt_R: jnp.ndarray  # int32: the prompt a slot reads, indexed within its shard
    slot_fed_R: jnp.ndarray  # int32: tokens of the slot's current sample already cached
    shards: int = flax.struct.field(pytree_node=False, default=1)  # P
    group_size: int = flax.struct.field(pytree_node=False, default=0)  # > 0: lock-step

    @classmethod
    def create(cls, k_LBSKH, v_LBSKH, valid_BS, *, num_slots: int, max_new_tokens: int,
               shards: int = 1, group_size: int = 0, cache_chunks: int = 1,
               dtype: Any = None) -> "KVCache":
        """Prefix table from a prefill's K/V `[L, B, S, K, H]`, and an empty slot cache of
        `num_slots` slots in `cache_chunks` chunks. Every slot starts on prompt 0 of its shard
        with nothing fed."""
        L, B, _, K, H = k_LBSKH.shape
        dtype = dtype or k_LBSKH.dtype
        if B % shards or num_slots % shards:
            raise ValueError(f"{B} prompts and {num_slots} slots must split into {shards} "
                             "shards")
        if group_size and num_slots != B * group_size:
            raise ValueError(f"lock-step needs one slot per sample ({B * group_size}), "
                             f"got {num_slots}")
        T, n = int(max_new_tokens), int(cache_chunks)
        if T % n:
            raise ValueError(f"{T} cache columns do not split into {n} chunks")
        return cls(
            prefix_k_BKHS=tuple(k_LBSKH[i].astype(dtype).transpose(0, 2, 3, 1)
                                for i in range(L)),
            prefix_v_BKSH=tuple(v_LBSKH[i].astype(dtype).transpose(0, 2, 1, 3)
                                for i in range(L)),
            prefix_valid_BS=valid_BS.astype(bool),
            k_RKHT=tuple(tuple(jnp.zeros((num_slots, K, H, T // n), dtype) for _ in range(n))
                         for _ in range(L)),
            v_RKTH=tuple(tuple(jnp.zeros((num_slots, K, T // n, H), dtype) for _ in range(n))
                         for _ in range(L)),
            slot_prompt_R=jnp.zeros((num_slots,), jnp.int32),
            slot_fed_R=jnp.zeros((num_slots,), jnp.int32),
            shards=shards,
            group_size=group_size,
        )

    @property
    def num_slots(self) -> int:
        return self.slot_fed_R.shape[0]

    @property
    def chunk_columns(self) -> int:
        return self.v_RKTH[0][0].shape[2]

    def write(self, layer: int, k_RKH, v_RKH):
        """This layer's chunks with each slot's new K/V in column `slot_fed_R` (the index of
        the token fed this step), in place; slots past the last column write nothing."""
        w, R = self.chunk_columns, self.num_slots
        chunk_R, col_R = self.slot_fed_R // w, self.slot_fed_R % w
        ks, vs = [], []
        for c, (k_RKHT, v_RKTH) in enumerate(zip(self.k_RKHT[layer], self.v_RKTH[layer])):
            rows_R = jnp.where(chunk_R == c, jnp.arange(R), R)  # R: out of range, dropped
            ks.append(k_RKHT.at[rows_R, :, :, col_R].set(k_RKH.astype(k_RKHT.dtype),
                                                         mode="drop"))
            vs.append(v_RKTH.at[rows_R, :, col_R, :].set(v_RKH.astype(v_RKTH.dtype),
                                                         mode="drop"))
        return tuple(ks), tuple(vs)

    def chunk_visible(self, chunk: int) -> jnp.ndarray:
        """`[R, T/n]`, after this step's write: the chunk's columns that hold the slot's
        current sample (columns 0..fed)."""
        w = self.chunk_columns
        return (chunk * w + jnp.arange(w))[None, :] <= self.slot_fed_R[:, None]

    def chunk_needed(self, chunk: int) -> jnp.ndarray:
        """Whether any slot sees a column of this chunk (scalar bool)."""
        return jnp.max(self.slot_fed_R) >= chunk * self.chunk_columns

    def assign(self, take_R, prompt_R, live_R=None) -> "KVCache":
        """Slots in `take_R` start a new sample of `prompt_R` (shard-local) with nothing fed.
        Slots not in `live_R` (no sample) are reset to nothing fed too, so their junk decodes
        neither run past the last column nor make attention read chunks nobody needs."""
        reset_R = take_R if live_R is None else take_R | ~live_R
        return self.replace(slot_prompt_R=jnp.where(take_R, prompt_R, self.slot_prompt_R),
                            slot_fed_R=jnp.where(reset_R, 0, self.slot_fed_R))

    def select_slots(self, index_R) -> "KVCache":
        """A cache of the slots `index_R` (shard-local indices, one block per shard) in that
        order: their cache rows, prompts and fed counts move with them."""
        def take(x_R):
            return gather_rows(x_R, index_R, self.shards)

        return self.replace(k_RKHT=jax.tree.map(take, self.k_RKHT),
                            v_RKTH=jax.tree.map(take, self.v_RKTH),
                            slot_prompt_R=take(self.slot_prompt_R),
                            slot_fed_R=take(self.slot_fed_R), group_size=0)

    def prefix_for_slots(self, layer: int):
        """This layer's prefix rows of each slot's prompt: keys `[R, K, H, S]`, values
        `[R, K, S, H]`, validity `[R, S]`. A gather within each shard's block."""
        return (gather_rows(self.prefix_k_BKHS[layer], self.slot_prompt_R, self.shards),
                gather_rows(self.prefix_v_BKSH[layer], self.slot_prompt_R, self.shards),
                gather_rows(self.prefix_valid_BS, self.slot_prompt_R, self.shards))


def gather_rows(table_B, index_R, shards: int):
    """`table_B[index_R]` where the B rows and the R indices are each split into `shards`
    contiguous blocks and block p's indices point into block p (local numbering). Written as
    a gather batched over the shard dimension, so a partitioner keeps it on each device."""
    B, R = table_B.shape[0], index_R.shape[0]
    blocks = table_B.reshape(shards, B // shards, *table_B.shape[1:])
    idx = index_R.reshape(shards, R // shards)
    out = jax.vmap(lambda t, i: jnp.take(t, i, axis=0, mode="clip"))(blocks, idx)
    return out.reshape(R, *table_B.shape[1:])
