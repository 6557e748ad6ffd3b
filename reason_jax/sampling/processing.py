"""Turning logits into a sampled token and its log-prob: temperature, top-k, top-p, greedy.

Dimensions: R rows (decode slots), V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30


def logprob_temperature(temperature):
    """tau of the returned log-probs: the sampling temperature, or 1 for greedy (0)."""
    return jnp.where(temperature > 0, temperature, 1.0)


def filter_logits(scaled_RV, *, top_k: int | None, top_p):
    """Temperature-scaled logits truncated to top-k / top-p (only ever sampled from; the
    returned log-probs are of the untruncated `scaled_RV`)."""
    if top_k is not None and top_k > 0:
        kth_R1 = jax.lax.top_k(scaled_RV, top_k)[0][:, -1:]
        scaled_RV = jnp.where(scaled_RV < kth_R1, _NEG, scaled_RV)
    if top_p is not None:
        # Keep the smallest set of tokens whose probability reaches top_p (always >= 1 token).
        sorted_RV = jnp.sort(scaled_RV, axis=-1)[:, ::-1]
        probs_RV = jax.nn.softmax(sorted_RV, axis=-1)
        keep_RV = (jnp.cumsum(probs_RV, axis=-1) - probs_RV) < top_p
        cutoff_R1 = jnp.min(jnp.where(keep_RV, sorted_RV, jnp.inf), axis=-1, keepdims=True)
        scaled_RV = jnp.where(scaled_RV < cutoff_R1, _NEG, scaled_RV)
    return scaled_RV


def argmax_last(x_RV):
    """First index of the maximum over the last axis, as two plain reductions (max, then the
    smallest index holding it): XLA:CPU runs `jnp.argmax`'s variadic (value, index) reduction
    an order of magnitude slower."""
    V = x_RV.shape[-1]
    hit_RV = x_RV == x_RV.max(-1, keepdims=True)
    return jnp.minimum(jnp.min(jnp.where(hit_RV, jnp.arange(V, dtype=jnp.int32), V), -1), V - 1)


def sample_keys(key, sample_R, step_R):
    """The key of sample n's token t: `fold_in(fold_in(key, t), n)`. A sample's draws depend
    only on (seed, n, t), never on which slot, step or device produces them."""
    return jax.vmap(lambda n, t: jax.random.fold_in(jax.random.fold_in(key, t), n))(
        sample_R, step_R)


def sample_tokens(keys_R, logits_RV, *, temperature, top_k, top_p):
    """One token per row from its own key, and its log-prob under softmax(logits / tau)
    (tau = `logprob_temperature`), without top-k/top-p truncation. temperature == 0: greedy.

    Returns (tokens_R int32, logprobs_R float32)."""
    tau = logprob_temperature(temperature)
    scaled_RV = logits_RV.astype(jnp.float32) / tau
    filtered_RV = filter_logits(scaled_RV, top_k=top_k, top_p=top_p)
    # jax.random.categorical's draw (argmax of logits + Gumbel noise), same stream.
    gumbel_RV = jax.vmap(lambda k: jax.random.gumbel(k, scaled_RV.shape[1:], jnp.float32))(keys_R)
    sampled_R = argmax_last(filtered_RV + gumbel_RV)
    greedy_R = argmax_last(logits_RV)
    tok_R = jnp.where(temperature > 0, sampled_R, greedy_R).astype(jnp.int32)
    logp_R = jnp.take_along_axis(jax.nn.log_softmax(scaled_RV, -1), tok_R[:, None], 1)[:, 0]
    return tok_R, logp_R
