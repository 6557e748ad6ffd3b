"""The rollout batch the train step consumes, and the log-probs of its completion tokens.

Dimensions: N rollouts (B prompts x G samples, rows of a group adjacent), S prompt bucket length
(static), T response length, X = S + T row length, V vocab.

Row layout (`row_layout` is its one owner): the prompt left-padded to S, then T completion
tokens (padding after the stop). Completion token t sits at column S + t and is predicted by
the logits at column S - 1 + t. Positions count real tokens only, so a left-padded prompt gets
the same position ids as the sampler gave it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from reason_jax.rl.entropy import entropy_from_logits

# apply_fn(params, tokens_NX, positions_NX, valid_NX) -> logits_NXV
ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class RolloutBatch:
    """One rollout batch. A plain dict with the same keys works everywhere too.

    tokens_NX int32, positions_NX int32 (position ids, pads 0), valid_NX bool (real tokens,
    attention keys), mask_NT (loss mask: completion tokens up to and including EOS), adv_N
    float, sampler_logp_NT (the sampler's log-probs: pi_old when the step does not recompute
    it, else the rollout side of the mismatch correction), ref_logp_NT (reference log-probs;
    only read when beta > 0).
    """

    tokens_NX: jax.Array
    positions_NX: jax.Array
    valid_NX: jax.Array
    mask_NT: jax.Array
    adv_N: jax.Array
    sampler_logp_NT: jax.Array | None = None
    ref_logp_NT: jax.Array | None = None


def row_layout(prompt_tokens_NS, prompt_valid_NS, tokens_NT, mask_NT):
    """Left-padded prompts + completions -> (tokens_NX, positions_NX, valid_NX).

    numpy in, numpy out (the host batch); jax in, jax out. Valid keys are the real prompt
    tokens and the completion up to and including its stop; positions run 0, 1, ... over the
    real prompt tokens and continue through the completion (padding gets 0).
    """
    xp = np if isinstance(prompt_tokens_NS, np.ndarray) else jnp
    prompt_valid_NS = xp.asarray(prompt_valid_NS).astype(bool)
    T = tokens_NT.shape[1]
    prompt_len_N = prompt_valid_NS.sum(1)
    positions_NS = xp.maximum(xp.cumsum(prompt_valid_NS, 1) - 1, 0)
    positions_NT = prompt_len_N[:, None] + xp.arange(T)[None, :]
    tokens_NX = xp.concatenate([prompt_tokens_NS, tokens_NT], 1).astype(xp.int32)
    positions_NX = xp.concatenate([positions_NS, positions_NT], 1).astype(xp.int32)
    valid_NX = xp.concatenate([prompt_valid_NS, xp.asarray(mask_NT).astype(bool)], 1)
    return tokens_NX, positions_NX, valid_NX


def get_field(batch, name: str, default=None):
    """Read a field from a RolloutBatch, a dataclass or a dict alike."""
    if isinstance(batch, dict):
        return batch.get(name, default)
    return getattr(batch, name, default)


def completion_logprobs(apply_fn: ApplyFn, params, batch, T: int, *, temperature: float = 1.0):
    """-> (logp_NT, entropy_NT) of the completion tokens under `params`, both float32.

    Jittable. `temperature` divides the logits as the sampler did, so the log-probs are those
    of the distribution the tokens were actually drawn from. Used for the policy (with
    gradient) in the train step, and by the loop for old / reference log-probs.
    """
    tokens_NX = get_field(batch, "tokens_NX")
    logits_NXV = apply_fn(
        params, tokens_NX, get_field(batch, "positions_NX"), get_field(batch, "valid_NX")
    )
    S = tokens_NX.shape[1] - T
    # Slice before the softmax: only the T predicting positions matter, not the prompt's S.
    logits_NTV = logits_NXV[:, S - 1 : S - 1 + T].astype(jnp.float32)
    if temperature != 1.0:
        logits_NTV = logits_NTV / temperature
    targets_NT = tokens_NX[:, S:]
    logp_all_NTV = jax.nn.log_softmax(logits_NTV, axis=-1)
    logp_NT = jnp.take_along_axis(logp_all_NTV, targets_NT[..., None], axis=-1)[..., 0]
    return logp_NT, entropy_from_logits(logits_NTV)


def split_rows(x, parts: int):
    """[N, ...] -> [parts, N/parts, ...], part c holding rows c, c+parts, c+2*parts, ...

    Strided rather than contiguous so that, with N sharded over `data` in contiguous blocks,
    every part keeps rows on every data shard (no resharding when scanning over parts).
    """
    n = x.shape[0]
    if n % parts:
        raise ValueError(f"{n} rows do not split into {parts} equal parts")
    return jnp.swapaxes(x.reshape((n // parts, parts) + x.shape[1:]), 0, 1)


def merge_rows(x):
    """Inverse of split_rows: [parts, N/parts, ...] -> [N, ...]."""
    return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def length_buckets(T: int, n: int) -> tuple[int, ...]:
    """`n` trimmed response lengths, evenly spaced up to T (n <= 1: just T)."""
    return tuple(sorted({max(1, -(-T * (i + 1) // n)) for i in range(max(n, 1))}))


def trim(rows, t: int, T: int):
    """Rows cut to their first t completion columns: `*_NX` arrays keep S + t columns, `*_NT`
    arrays t. Exact for every position < S + t: attention is causal, so the cut columns never
    influence them."""
    def cut(name, x):
        if name.endswith("_NX"):
            return x[:, : x.shape[1] - (T - t)]
        if name.endswith("_NT"):
            return x[:, :t]
        return x
    return {k: cut(k, v) for k, v in rows.items()}


def bucket_index(last, buckets: tuple[int, ...]):
    """Index of the smallest bucket holding `last` columns (numpy or jax alike)."""
    xp = np if isinstance(last, (int, np.integer, np.ndarray)) else jnp
    return xp.minimum(xp.searchsorted(xp.asarray(buckets), last), len(buckets) - 1)


def switch_on_length(fn, rows, buckets: tuple[int, ...], T: int):
    """`fn(trim(rows, t))` for the smallest bucket t that holds every masked position of
    `rows` (lax.switch: one compiled branch per bucket, no recompilation, and compute follows
    the longest real row instead of T)."""
    if len(buckets) <= 1:
        return fn(rows)
    mask_NT = rows["mask_NT"]
    last = jnp.max(jnp.where(mask_NT > 0, jnp.arange(1, T + 1)[None, :], 0))
    branches = [lambda r, t=t: fn(trim(r, t, T)) for t in buckets]
    return jax.lax.switch(bucket_index(last, buckets), branches, rows)


def length_grouped_order(lengths_N, *, num_minibatches: int, micro_batches: int,
                         data_shards: int = 1) -> np.ndarray:
    """A row permutation (host side) after which every micro-batch holds rows of similar
    length, so `switch_on_length` can trim it.

    The train step splits rows with `split_rows` (strided): minibatch m, micro-batch c is the
    residue class m + M*c modulo P = M*A, and each data shard holds a contiguous block. Within
    every block the rows are sorted by length; micro-batch c of every minibatch gets the c-th
    length quantile, dealt round-robin over the minibatches. Any permutation leaves the loss
    exact (every term is per-row numerators over the minibatch normaliser); this one only
    decides which rows share a micro-batch.
    """
    lengths_N = np.asarray(lengths_N)
    N, M, A = len(lengths_N), num_minibatches, micro_batches
    P = M * A
    block = N // data_shards
    if N % data_shards or block % P:
        raise ValueError(f"{N} rows do not split into {data_shards} shards of {P} parts")
    per = block // P
    order = np.empty(N, np.int64)
    for d in range(data_shards):
        rows = d * block + np.argsort(lengths_N[d * block:(d + 1) * block], kind="stable")
        for c in range(A):
            group = rows[c * M * per:(c + 1) * M * per]
            for m in range(M):
                order[d * block + m + M * c + P * np.arange(per)] = group[m::M]
    return order


def chunked_logprobs(apply_fn: ApplyFn, params, batch, T: int, *, chunks: int = 1,
                     temperature: float = 1.0, sharding=None, buckets: tuple[int, ...] = ()):
    """logp_NT (no gradient) over `chunks` sequential row chunks: chunking bounds the
    [rows, T, V] logits held at once; `buckets` trims each chunk (`switch_on_length`).
    Jittable."""
    names = ("tokens_NX", "positions_NX", "valid_NX", "mask_NT")
    fields = {k: get_field(batch, k) for k in names if get_field(batch, k) is not None}
    chunked = jax.tree.map(lambda x: split_rows(x, chunks), fields)

    def logp(chunk):
        t = chunk["tokens_NX"].shape[1] - (fields["tokens_NX"].shape[1] - T)
        out_Nt = completion_logprobs(apply_fn, params, chunk, t, temperature=temperature)[0]
        return jnp.pad(out_Nt, ((0, 0), (0, T - t)))

    def one(chunk):
        if sharding is not None:
            chunk = jax.lax.with_sharding_constraint(chunk, sharding)
        if buckets and "mask_NT" in chunk:
            return switch_on_length(logp, chunk, tuple(buckets), T)
        return logp(chunk)

    return jax.lax.stop_gradient(merge_rows(jax.lax.map(one, chunked)))


def make_logprob_fn(apply_fn: ApplyFn, T: int, *, chunks: int = 1, temperature: float = 1.0,
                    batch_sharding=None):
    """Jitted `fn(params, batch) -> logp_NT`: reference log-probs for the loop (params = the
    reference weights), or pi_old computed outside the train step."""

    def fn(params, batch):
        return chunked_logprobs(apply_fn, params, batch, T, chunks=chunks,
                                temperature=temperature, sharding=batch_sharding)

    return jax.jit(fn)
