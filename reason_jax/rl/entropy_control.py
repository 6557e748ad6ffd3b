"""Clip-Cov and KL-Cov: entropy control by the covariance of log-prob and advantage.

Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
Models" (arXiv 2505.22617); the same rules as verl's `compute_policy_loss_clip_cov` and
`compute_policy_loss_kl_cov` (verl/trainer/ppo/core_algos.py), whose config names and defaults
`CovConfig` keeps (verl calls `kl_cov_coef` `ppo_kl_coef`).

Under policy gradient the entropy changes with -Cov(log pi(y_t), A_t): confident tokens with
positive advantage drive entropy down. Both methods act on the few tokens with the largest
centred covariance

    cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta)     (means over valid tokens)

  Clip-Cov: among valid tokens the PPO clip leaves alone whose cov_t lies in (lb, ub), pick
    max(floor(ratio * #valid), 1) at random and drop them from the loss (value and gradient);
  KL-Cov: the loss has no clip (-A r); the max(floor(ratio * #valid), 1) tokens of largest
    cov_t get coef * |log pi_theta - log pi_old| added.

The set is the micro-batch. A rank over the whole minibatch would need every micro-batch's
current log-probs before the first gradient, i.e. a second forward pass, so it cannot be kept
exact under gradient accumulation; the selection is therefore made per micro-batch (what verl
does too), and `micro_batches` (and `length_buckets`, which regroups rows) change which tokens
are picked. Data parallelism does not: under jit the micro-batch is one global array over all
data shards, so the rank is global (verl ranks per GPU). Everything else keeps the exact
"numerator / minibatch normaliser" form.

Clip-Cov's random draw is a function of the micro-batch (`token_uniforms`: a hash of its
pi_old log-probs and each token's position): a step is reproducible and resumes exactly
without a PRNG key threaded through the train step, and trimming padding columns changes
nothing; the same rows draw the same numbers in every epoch (their candidate sets still move
with the policy).

Dimensions: N rollouts in the micro-batch, T response length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CovConfig(NamedTuple):
    """Hyperparameters of Clip-Cov and KL-Cov (StepConfig fields of the same names); defaults
    are verl's (actor.yaml `policy_loss`)."""

    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    kl_cov_coef: float = 0.1


def token_covariance(logp_NT, adv_N, mask_NT):
    """cov_t = (A_t - mean A)(logp_t - mean logp), means over the valid tokens; no gradient.
    Padding positions hold 0 (callers mask them)."""
    valid_NT = mask_NT > 0
    count = jnp.maximum(jnp.sum(valid_NT), 1)
    adv_NT = jnp.broadcast_to(adv_N[:, None], logp_NT.shape)
    logp_NT = jax.lax.stop_gradient(jnp.where(valid_NT, logp_NT, 0.0))
    adv_NT = jnp.where(valid_NT, adv_NT, 0.0)
    adv_mean = jnp.sum(adv_NT) / count
    logp_mean = jnp.sum(logp_NT) / count
    return jnp.where(valid_NT, (adv_NT - adv_mean) * (logp_NT - logp_mean), 0.0)


def selection_count(ratio: float, mask_NT):
    """max(floor(ratio * number of valid tokens), 1), as verl's int(...) and max(..., 1)."""
    valid = jnp.sum((mask_NT > 0).astype(jnp.float32))
    return jnp.maximum(jnp.floor(ratio * valid), 1.0).astype(jnp.int32)


def take_largest(priority_NT, eligible_NT, k):
    """Boolean [N, T]: the min(k, #eligible) eligible tokens of largest priority, ties going to
    the earlier position (row-major), so exactly that many are picked. One stable sort."""
    flat = jnp.where(eligible_NT, priority_NT, -jnp.inf).reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return eligible_NT & (rank.reshape(priority_NT.shape) < k)


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: every input bit flips about half the output bits."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def token_uniforms(old_logp_NT, mask_NT):
    """Pseudo-random priorities in [0, 1), one per token, that are a pure function of the
    micro-batch: a hash of the bits of its valid pi_old log-probs (position-weighted wrapping
    integer sum: exact and order-free, so equal on any device layout) mixed with each token's
    (row, column). Trimming padding columns (`length_buckets`) changes none of them."""
    bits_NT = jax.lax.bitcast_convert_type(old_logp_NT.astype(jnp.float32), jnp.uint32)
    row_N1 = jnp.arange(bits_NT.shape[0], dtype=jnp.uint32)[:, None]
    col_1T = jnp.arange(bits_NT.shape[1], dtype=jnp.uint32)[None, :]
    weight_NT = row_N1 * jnp.uint32(65537) + col_1T + jnp.uint32(1)
    h = jnp.sum(jnp.where(mask_NT > 0, bits_NT * weight_NT, jnp.uint32(0)), dtype=jnp.uint32)
    x_NT = _fmix32(h ^ _fmix32(row_N1 * jnp.uint32(0x9E3779B1) + col_1T))
    # The top 24 bits are exact in float32.
    return (x_NT >> 8).astype(jnp.float32) / float(1 << 24)


def clip_cov_detached(logp_NT, old_logp_NT, adv_N, mask_NT, clipped_NT, cov: CovConfig):
    """Clip-Cov's selection, boolean [N, T]: tokens whose loss (value and gradient) is dropped.

    Candidates are valid tokens that no clip already holds (`clipped_NT`) with clip_cov_lb <
    cov_t < clip_cov_ub; max(floor(clip_cov_ratio * #valid), 1) of them are taken uniformly at
    random (all of them if fewer)."""
    valid_NT = mask_NT > 0
    cov_NT = token_covariance(logp_NT, adv_N, mask_NT)
    candidates_NT = (valid_NT & ~clipped_NT & (cov_NT > cov.clip_cov_lb)
                     & (cov_NT < cov.clip_cov_ub))
    priority_NT = token_uniforms(old_logp_NT, mask_NT)
    return take_largest(priority_NT, candidates_NT, selection_count(cov.clip_cov_ratio, mask_NT))


def kl_cov_loss(logp_NT, old_logp_NT, ratio_NT, adv_N, mask_NT, cov: CovConfig):
    """KL-Cov per-token loss -A r + coef |logp - old_logp| on the selected tokens, -A r on the
    others (no clip). Returns (loss_NT, selected_NT)."""
    valid_NT = mask_NT > 0
    cov_NT = token_covariance(logp_NT, adv_N, mask_NT)
    selected_NT = take_largest(cov_NT, valid_NT, selection_count(cov.kl_cov_ratio, mask_NT))
    abs_log_ratio_NT = jnp.abs(jnp.where(valid_NT, logp_NT - old_logp_NT, 0.0))
    loss_NT = -adv_N[:, None] * ratio_NT + jnp.where(
        selected_NT, cov.kl_cov_coef * abs_log_ratio_NT, 0.0)
    return loss_NT, selected_NT
