"""PPO-style clipped surrogate with clip-higher, dual clip and sequence-level ratios (GSPO).

Dimensions: N rollouts, T response length.

`policy_loss` is the one-shot form for a whole minibatch. `policy_loss_terms` returns the
additive pieces (a numerator and metric sums) so the train step can accumulate micro-batches
and divide once by `aggregation.agg_normaliser` of the whole minibatch (exact token-mean at
scale; see aggregation.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reason_jax.rl.aggregation import agg_normaliser, agg_numerator, check_agg

LEVELS = ("token", "sequence")
# exp(20) ~ 5e8: far beyond any clip range, yet finite in float32 and bfloat16, so one stale
# token cannot turn the loss into inf.
LOG_RATIO_CLAMP = 20.0


def clipped_surrogate(ratio, adv, *, clip_low=0.2, clip_high=0.28, dual_clip=None):
    """Per-element loss -min(r A, clip(r, 1-eps_low, 1+eps_high) A), dual-clipped for A < 0.

    Returns (loss, clipped_low, clipped_high, clipped_dual) with the boolean masks counting
    where a clip binds (clip_frac/high: A > 0 and r > 1+eps_high; clip_frac/low: A < 0 and
    r < 1-eps_low; dual: A < 0 and the c|A| cap binds).
    """
    unclipped = -ratio * adv
    clipped = -jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = jnp.maximum(unclipped, clipped)
    clipped_low = (adv < 0) & (ratio < 1.0 - clip_low)
    clipped_high = (adv > 0) & (ratio > 1.0 + clip_high)
    if dual_clip is None:
        clipped_dual = jnp.zeros_like(clipped_low)
    else:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
        cap = dual_clip * jnp.abs(adv)
        clipped_dual = (adv < 0) & (loss > cap)
        # Only for negative advantages: there a huge ratio means an unbounded loss.
        loss = jnp.where(adv < 0, jnp.minimum(loss, cap), loss)
    return loss, clipped_low, clipped_high, clipped_dual


def _ratios_NT(logp_NT, old_logp_NT, mask_NT, level):
    mask_NT = mask_NT.astype(jnp.float32)
    # where, not *: padding may hold -inf sampler log-probs, and inf * 0 is NaN.
    log_ratio_NT = jnp.where(mask_NT > 0, logp_NT - old_logp_NT, 0.0)
    if level == "token":
        return jnp.exp(jnp.clip(log_ratio_NT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    # GSPO: s_i = exp(mean_t log r_it), one ratio per sequence, broadcast to its tokens so the
    # token aggregation modes apply unchanged (seq-mean-token-mean then averages L_i).
    len_N = jnp.maximum(jnp.sum(mask_NT, axis=1), 1.0)
    log_s_N = jnp.sum(log_ratio_NT, axis=1) / len_N
    s_N = jnp.exp(jnp.clip(log_s_N, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return jnp.broadcast_to(s_N[:, None], logp_NT.shape)


def policy_loss_terms(
    logp_NT,
    old_logp_NT,
    adv_N,
    mask_NT,
    *,
    clip_low=0.2,
    clip_high=0.28,
    dual_clip=None,
    agg="token-mean",
    level="token",
    weight_NT=None,
):
    """Additive pieces of the policy loss for one (micro-)batch.

    `weight_NT` (no gradient; e.g. TIS rollout-correction weights) multiplies each token's
    loss before aggregation.

    Returns (numerator, sums): numerator / agg_normaliser(full-minibatch mask, agg) is the
    loss; `sums` holds `tokens`, `clip_low`, `clip_high`, `clip_dual`, `ratio_sum` (sums over
    valid tokens) and `ratio_max`, to be summed (max-ed) over micro-batches and turned into
    metrics by `finalize_metrics`.
    """
    check_agg(agg)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    logp_NT = logp_NT.astype(jnp.float32)
    old_logp_NT = jax.lax.stop_gradient(old_logp_NT.astype(jnp.float32))
    adv_N = jax.lax.stop_gradient(jnp.asarray(adv_N, jnp.float32))
    maskf_NT = mask_NT.astype(jnp.float32)

    ratio_NT = _ratios_NT(logp_NT, old_logp_NT, maskf_NT, level)
    loss_NT, low_NT, high_NT, dual_NT = clipped_surrogate(
        ratio_NT, adv_N[:, None], clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip
    )
    if weight_NT is not None:
        loss_NT = loss_NT * jax.lax.stop_gradient(weight_NT.astype(jnp.float32))
    numerator = agg_numerator(loss_NT, maskf_NT, agg)
    ratio_sg_NT = jax.lax.stop_gradient(ratio_NT)
    sums = {
        "tokens": jnp.sum(maskf_NT),
        "clip_low": jnp.sum(low_NT * maskf_NT),
        "clip_high": jnp.sum(high_NT * maskf_NT),
        "clip_dual": jnp.sum(dual_NT * maskf_NT),
        "ratio_sum": jnp.sum(ratio_sg_NT * maskf_NT),
        # Ratios are positive, so 0 is a neutral fill for padding.
        "ratio_max": jnp.max(jnp.where(maskf_NT > 0, ratio_sg_NT, 0.0)),
    }
    return numerator, sums


def combine_sums(a, b):
    """Merge two `sums` dicts of policy_loss_terms (micro-batch accumulation)."""
    return {k: jnp.maximum(a[k], b[k]) if k == "ratio_max" else a[k] + b[k] for k in a}


def finalize_metrics(sums, *, dual_clip=None):
    """Means over valid tokens: clip_frac/low, clip_frac/high, ratio/mean, ratio/max."""
    tokens = jnp.maximum(sums["tokens"], 1.0)
    metrics = {
        "clip_frac/low": sums["clip_low"] / tokens,
        "clip_frac/high": sums["clip_high"] / tokens,
        "ratio/mean": sums["ratio_sum"] / tokens,
        "ratio/max": sums["ratio_max"],
    }
    if dual_clip is not None:
        metrics["clip_frac/dual"] = sums["clip_dual"] / tokens
    return metrics


def policy_loss(
    logp_NT,
    old_logp_NT,
    adv_N,
    mask_NT,
    *,
    clip_low=0.2,
    clip_high=0.28,
    dual_clip=None,
    agg="token-mean",
    level="token",
):
    """Clipped policy-gradient loss of a whole minibatch -> (loss, metrics).

    logp_NT: log pi_theta of the sampled tokens; old_logp_NT: log pi_old (no gradient);
    adv_N: one advantage per rollout, broadcast to its tokens; mask_NT: 1 for completion tokens
    up to and including EOS. `level="sequence"` is GSPO (use its small clip range, e.g.
    3e-4/4e-4). Metrics are means over valid tokens.
    """
    numerator, sums = policy_loss_terms(
        logp_NT,
        old_logp_NT,
        adv_N,
        mask_NT,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        agg=agg,
        level=level,
    )
    loss = numerator / agg_normaliser(mask_NT, agg)
    return loss, finalize_metrics(sums, dual_clip=dual_clip)
