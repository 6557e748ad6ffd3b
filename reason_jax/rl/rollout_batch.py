"""The rollout batch the train step consumes, and the log-probs of its completion tokens.

Dimensions: N rollouts (B prompts x G samples, rows of a group adjacent), S prompt bucket length
(static), T response length, L = S + T, V vocab.

Row layout: the prompt left-padded to S, then T completion tokens (padding after the stop).
Completion token t sits at column S + t and is predicted by the logits at column S - 1 + t.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from reason_jax.rl.entropy import entropy_from_logits

# apply_fn(params, tokens_NL, positions_NL, valid_NL) -> logits_NLV
ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class RolloutBatch:
    """One rollout batch. A plain dict with the same keys works everywhere too.

    tokens_NL int32, positions_NL int32 (position ids, pads 0), valid_NL bool (real tokens,
    attention keys), mask_NT (loss mask: completion tokens up to and including EOS), adv_N
    float, old_logp_NT (sampler log-probs; optional when the step recomputes them),
    ref_logp_NT (reference log-probs; only read when beta > 0).
    """

    tokens_NL: jax.Array
    positions_NL: jax.Array
    valid_NL: jax.Array
    mask_NT: jax.Array
    adv_N: jax.Array
    old_logp_NT: jax.Array | None = None
    ref_logp_NT: jax.Array | None = None


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
    tokens_NL = get_field(batch, "tokens_NL")
    logits_NLV = apply_fn(
        params, tokens_NL, get_field(batch, "positions_NL"), get_field(batch, "valid_NL")
    )
    S = tokens_NL.shape[1] - T
    # Slice before the softmax: only the T predicting positions matter, not the prompt's S.
    logits_NTV = logits_NLV[:, S - 1 : S - 1 + T].astype(jnp.float32)
    if temperature != 1.0:
        logits_NTV = logits_NTV / temperature
    targets_NT = tokens_NL[:, S:]
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


def make_logprob_fn(
    apply_fn: ApplyFn,
    T: int,
    *,
    chunks: int = 1,
    temperature: float = 1.0,
    batch_sharding=None,
):
    """Jitted `fn(params, batch) -> logp_NT` over `chunks` sequential row chunks.

    For the loop: reference log-probs (params = reference weights) or old log-probs computed
    outside the train step. Chunking bounds the [rows, T, V] logits held at once.
    """

    def fn(params, batch):
        fields = {k: get_field(batch, k) for k in ("tokens_NL", "positions_NL", "valid_NL")}
        chunked = jax.tree.map(lambda x: split_rows(x, chunks), fields)

        def one(chunk):
            if batch_sharding is not None:
                chunk = jax.lax.with_sharding_constraint(chunk, batch_sharding)
            return completion_logprobs(apply_fn, params, chunk, T, temperature=temperature)[0]

        return merge_rows(jax.lax.map(one, chunked))

    return jax.jit(fn)
