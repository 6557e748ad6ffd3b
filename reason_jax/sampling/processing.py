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


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al., SC'11: the hash behind `jax.random`), on
    broadcast uint32 arrays: key (k0, k1), counter (x0, x1) -> two random words. Written out
    unrolled so XLA fuses it into one elementwise loop; jax's own CPU lowering rolls the rounds
    into a `while` of small ops, which costs more than the rest of sampling per decode step."""
    u32 = jnp.uint32
    k0, k1, x0, x1 = (jnp.asarray(a, u32) for a in (k0, k1, x0, x1))
    ks = (k0, k1, k0 ^ k1 ^ u32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << u32(r)) | (x1 >> u32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + u32(i + 1)
    return x0, x1


def key_words(key):
    """Two uint32 words of a PRNG key (any implementation): the root of every draw."""
    return jax.random.bits(key, (2,), jnp.uint32)


def gumbel_noise(words, sample_R, t_R, vocab: int):
    """Standard Gumbel noise `[R, V]` for token t of sample n, counter-based. The row key is
    threefry(words, (n, t)); with H' = ceil(V / 2), entry v < H' takes word 0 and entry
    v >= H' word 1 of threefry(row key, (v mod H', 0)). A sample's draws depend only on
    (key, n, t), never on the slot, step or device that makes them."""
    u32 = jnp.uint32
    k0_R, k1_R = threefry2x32(words[0], words[1], sample_R.astype(u32), t_R.astype(u32))
    half = (vocab + 1) // 2
    c_H = jnp.arange(half, dtype=u32)[None, :]
    b0_RH, b1_RH = threefry2x32(k0_R[:, None], k1_R[:, None], c_H, jnp.zeros_like(c_H))
    bits_RV = jnp.concatenate([b0_RH, b1_RH], axis=1)[:, :vocab]
    # 23 random mantissa bits -> [1, 2) -> [0, 1), kept off 0 for the logs.
    u_RV = jax.lax.bitcast_convert_type((bits_RV >> u32(9)) | u32(0x3F800000), jnp.float32) - 1
    u_RV = jnp.maximum(u_RV, jnp.finfo(jnp.float32).tiny)
    return -jnp.log(-jnp.log(u_RV))


def sample_tokens(words, sample_R, t_R, logits_RV, *, temperature, top_k, top_p):
    """Token t of each row's sample n, drawn from softmax(logits / tau) truncated to
    top-k/top-p (Gumbel-max with `gumbel_noise(words, n, t)`), and its log-prob under the
    untruncated softmax(logits / tau), tau = `logprob_temperature`. temperature == 0: greedy.

    Returns (tokens_R int32, logprobs_R float32)."""
    tau = logprob_temperature(temperature)
    scaled_RV = logits_RV.astype(jnp.float32) / tau
    filtered_RV = filter_logits(scaled_RV, top_k=top_k, top_p=top_p)
    noise_RV = gumbel_noise(words, sample_R, t_R, scaled_RV.shape[1])
    sampled_R = argmax_last(filtered_RV + noise_RV)
    greedy_R = argmax_last(logits_RV)
    tok_R = jnp.where(temperature > 0, sampled_R, greedy_R).astype(jnp.int32)
    logp_R = jnp.take_along_axis(jax.nn.log_softmax(scaled_RV, -1), tok_R[:, None], 1)[:, 0]
    return tok_R, logp_R
