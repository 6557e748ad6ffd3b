"""The fused group sampler: one jitted prefill + `lax.while_loop` decode, on device.

For B prompts and group size G it returns N = B*G completions (rows of one prompt adjacent)
from a single jitted call with no host round-trip per token:

1. Prompts are padded to a length bucket S (so new prompt lengths reuse compiled code) and
   left-aligned to the end of the bucket, so every row's last prompt token sits in slot S-1.
2. Prefill runs once per *prompt*; its K/V become the shared prefix of the group's G rows
   (see `KVCache`): no G-fold prefill and no G-fold copy of prompt K/V.
3. Decode runs in a `lax.while_loop` until every row has emitted an EOS id or
   `max_new_tokens` is reached; the cache lives in the loop carry and is updated in place.

Dimensions: B prompts, G group, N = B*G, S prompt bucket, T = max_new_tokens, V vocab.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reason_jax.data.bucketing import bucket_length
from reason_jax.models.kv_cache import KVCache
from reason_jax.sampling.processing import sample_tokens



@flax.struct.dataclass
class SampleOutput:
    """Device arrays. Log-probs are of the sampled tokens under the *policy* (temperature-1,
    untruncated distribution), whatever temperature/top-k/top-p were used to draw them: that
    is the pi_old of the importance ratio."""

    tokens: jnp.ndarray  # [N, T] int32; pad after a row stops
    logprobs: jnp.ndarray  # [N, T] float32; 0 where mask is 0
    mask: jnp.ndarray  # [N, T] bool: generated tokens up to and including the first EOS
    lengths: jnp.ndarray  # [N] int32
    truncated: jnp.ndarray  # [N] bool: reached max_new_tokens without EOS
    prompt_tokens: jnp.ndarray  # [N, S] int32, left-padded (S is the bucket)
    prompt_valid: jnp.ndarray  # [N, S] bool


def left_align(tokens_BS, lengths_B, pad_id):
    """Right-padded prompts -> left-padded ones, plus validity and position ids."""
    B, S = tokens_BS.shape
    shift_B = S - lengths_B
    src_BS = jnp.arange(S)[None, :] - shift_B[:, None]
    valid_BS = src_BS >= 0
    left_BS = jnp.where(valid_BS, jnp.take_along_axis(tokens_BS, jnp.maximum(src_BS, 0), 1),
                        pad_id)
    positions_BS = jnp.maximum(src_BS, 0).astype(jnp.int32)
    return left_BS.astype(jnp.int32), valid_BS, positions_BS


@flax.struct.dataclass
class _LoopState:
    step: jnp.ndarray
    logits_NV: jnp.ndarray
    cache: KVCache
    tokens_NT: jnp.ndarray
    logprobs_NT: jnp.ndarray
    done_N: jnp.ndarray
    stop_step_N: jnp.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "group_size", "max_new_tokens", "top_k",
                                             "use_top_p", "eos_ids", "pad_id", "cache_dtype"))
def _generate(graphdef, state, tokens_BS, lengths_B, key, temperature, top_p, *, group_size,
              max_new_tokens, top_k, use_top_p, eos_ids, pad_id, cache_dtype):
    model = nnx.merge(graphdef, state)
    B, S = tokens_BS.shape
    G, T = group_size, max_new_tokens
    N = B * G
    left_BS, valid_BS, positions_BS = left_align(tokens_BS, lengths_B, pad_id)
    logits_BV, (k_LBSKH, v_LBSKH) = model.prefill(left_BS, positions_BS, valid_BS)
    cache = KVCache.from_prefix(k_LBSKH.astype(cache_dtype), v_LBSKH.astype(cache_dtype),
                                valid_BS, group_size=G, max_new_tokens=T)
    lengths_N = jnp.repeat(lengths_B, G)
    row_ids_N = jnp.arange(N)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    top_p_arg = top_p if use_top_p else None

    def cond(s: _LoopState):
        return (s.step < T) & ~jnp.all(s.done_N)

    def body(s: _LoopState):
        step_key = jax.random.fold_in(key, s.step)
        tok_N = sample_tokens(step_key, s.logits_NV, row_ids_N, temperature=temperature,
                              top_k=top_k, top_p=top_p_arg)
        logp_N = jnp.take_along_axis(jax.nn.log_softmax(s.logits_NV, -1), tok_N[:, None], 1)[:, 0]
        active_N = ~s.done_N
        tok_N = jnp.where(active_N, tok_N, pad_id)
        tokens_NT = s.tokens_NT.at[:, s.step].set(tok_N)
        logprobs_NT = s.logprobs_NT.at[:, s.step].set(jnp.where(active_N, logp_N, 0.0))
        hit_N = active_N & jnp.any(tok_N[:, None] == eos[None, :], axis=-1)
        stop_step_N = jnp.where(hit_N, s.step + 1, s.stop_step_N)
        done_N = s.done_N | hit_N
        positions_N1 = (lengths_N + s.step)[:, None].astype(jnp.int32)
        logits_N1V, cache = model.decode(tok_N[:, None], positions_N1, s.cache)
        return _LoopState(s.step + 1, logits_N1V[:, 0], cache, tokens_NT, logprobs_NT, done_N,
                          stop_step_N)

    init = _LoopState(
        step=jnp.zeros((), jnp.int32),
        logits_NV=jnp.repeat(logits_BV, G, axis=0),
        cache=cache,
        tokens_NT=jnp.full((N, T), pad_id, jnp.int32),
        logprobs_NT=jnp.zeros((N, T), jnp.float32),
        done_N=jnp.zeros((N,), bool),
        stop_step_N=jnp.full((N,), T, jnp.int32),
    )
    final = jax.lax.while_loop(cond, body, init)
    lengths_out_N = final.stop_step_N
    mask_NT = jnp.arange(T)[None, :] < lengths_out_N[:, None]
    return SampleOutput(
        tokens=final.tokens_NT,
        logprobs=final.logprobs_NT,
        mask=mask_NT,
        lengths=lengths_out_N,
        truncated=~final.done_N,
        prompt_tokens=jnp.repeat(left_BS, G, axis=0),
        prompt_valid=jnp.repeat(valid_BS, G, axis=0),
    )


def generate(model: Any, prompt_tokens_BS, prompt_lengths_B, *, group_size: int = 1,
             max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_ids: Sequence[int] = (), seed: Any = 0,
             pad_id: int = 0, buckets: Sequence[int] | None = None,
             cache_dtype: Any = None) -> SampleOutput:
    """Sample `group_size` completions for each of B prompts in one jitted call.

    Args:
      model: a `Transformer`, or a `(graphdef, state)` pair (e.g. state resharded for rollout).
      prompt_tokens_BS: right-padded prompt ids; row b's prompt is `[b, :prompt_lengths_B[b]]`.
      group_size: G completions per prompt; output row b*G + g belongs to prompt b.
      temperature: 0 means greedy. Log-probs are always those of the temperature-1 policy.
      seed: int or PRNG key. Row n at step t draws with `fold_in(fold_in(key, t), n)`, so a
        seed reproduces a call exactly and a new seed per RL step gives new samples.
      buckets: allowed padded prompt lengths (default powers of two from 16).
    """
    if isinstance(model, tuple):
        graphdef, state = model
    else:
        graphdef, state = nnx.split(model)
    tokens = np.asarray(prompt_tokens_BS) if not isinstance(prompt_tokens_BS, jax.Array) \
        else prompt_tokens_BS
    lengths = jnp.asarray(prompt_lengths_B, jnp.int32)
    B, S_in = tokens.shape
    S = bucket_length(S_in, buckets)
    if S != S_in:
        tokens = jnp.pad(jnp.asarray(tokens), ((0, 0), (0, S - S_in)), constant_values=pad_id)
    key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    if cache_dtype is None:
        cache_dtype = _compute_dtype(model, state)
    return _generate(graphdef, state, jnp.asarray(tokens, jnp.int32), lengths, key,
                     jnp.float32(temperature), jnp.float32(top_p if top_p is not None else 1.0),
                     group_size=int(group_size), max_new_tokens=int(max_new_tokens),
                     top_k=int(top_k) if top_k else None, use_top_p=top_p is not None,
                     eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id),
                     cache_dtype=jnp.dtype(cache_dtype).name)


def _compute_dtype(model, state) -> Any:
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return cfg.dtype
    leaves = jax.tree.leaves(state)
    return leaves[0].dtype if leaves else jnp.float32
