"""Policy losses: the PPO-style clipped surrogate (clip-higher, dual clip, GSPO's sequence
ratios), CISPO, and the entropy-controlling Clip-Cov / KL-Cov (`entropy_control.py`).

Dimensions: N rollouts, T response length.

`loss` picks the per-token loss (StepConfig.loss); everything after it is shared:
  ppo       -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), dual-clipped for A < 0;
  cispo     -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi_theta   (MiniMax-M1);
  clip_cov  ppo, minus a few high-covariance tokens dropped from the loss  (Cui et al. 2025);
  kl_cov    -A r, plus coef |log r| on the highest-covariance tokens       (Cui et al. 2025).

`policy_loss` is the one-shot form for a whole minibatch. `policy_loss_terms` returns the
additive pieces (a numerator and metric sums) so the train step can accumulate micro-batches
and divide once by `aggregation.agg_normaliser` of the whole minibatch (exact token-mean at
scale; see aggregation.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reason_jax.rl.aggregation import agg_normaliser, agg_numerator, check_agg
from reason_jax.rl.entropy_control import CovConfig, clip_cov_detached, kl_cov_loss

LEVELS = ("token", "sequence")
LOSSES = ("ppo", "cispo", "clip_cov", "kl_cov")
# Losses that select tokens by covariance; they add the `cov_selected` metric sum.
COV_LOSSES = ("clip_cov", "kl_cov")
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


def cispo_surrogate(ratio, adv, logp, *, clip_low=1.0, clip_high=0.28):
    """CISPO (MiniMax-M1, arXiv 2506.13585; verl `compute_policy_loss_cispo`): per element
    -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi_theta.

    A REINFORCE-style term weighted by a clipped, stop-gradient importance weight: every token
    keeps its gradient -w A (PPO's clip zeroes it), only the weight is bounded. clip_low >= 1
    means no lower clip (MiniMax-M1 sets eps_low large). Returns (loss, clipped_low,
    clipped_high): where the weight's bounds bind, whatever the sign of A (verl's clip
    fraction).
    """
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
    return -weight * adv * logp, ratio < 1.0 - clip_low, ratio > 1.0 + clip_high


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
    loss="ppo",
    cov=CovConfig(),
):
    """Additive pieces of the policy loss for one (micro-)batch.

    `weight_NT` (no gradient; e.g. TIS rollout-correction weights) multiplies each token's
    loss before aggregation. `loss` picks the per-token loss (module docstring; `cov` holds
    Clip-Cov's / KL-Cov's hyperparameters, whose token selection is made over the arrays
    given here, i.e. per micro-batch: entropy_control.py).

    Returns (numerator, sums): numerator / agg_normaliser(full-minibatch mask, agg) is the
    loss; `sums` holds `tokens`, `clip_low`, `clip_high`, `clip_dual`, `ratio_sum` (sums over
    valid tokens) and `ratio_max` (plus `cov_selected` for clip_cov / kl_cov), to be summed
    (max-ed) over micro-batches and turned into metrics by `finalize_metrics`.
    """
    check_agg(agg)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    if level != "token" and loss != "ppo":
        raise ValueError(f"level={level!r} (GSPO) is a form of the ppo loss, not of {loss!r}")
    logp_NT = logp_NT.astype(jnp.float32)
    old_logp_NT = jax.lax.stop_gradient(old_logp_NT.astype(jnp.float32))
    adv_N = jax.lax.stop_gradient(jnp.asarray(adv_N, jnp.float32))
    maskf_NT = mask_NT.astype(jnp.float32)

    ratio_NT = _ratios_NT(logp_NT, old_logp_NT, maskf_NT, level)
    selected_NT = None
    if loss == "cispo":
        # where: a padded position's log-prob may be anything, and must not reach the loss.
        safe_logp_NT = jnp.where(maskf_NT > 0, logp_NT, 0.0)
        loss_NT, low_NT, high_NT = cispo_surrogate(
            ratio_NT, adv_N[:, None], safe_logp_NT, clip_low=clip_low, clip_high=clip_high)
        dual_NT = jnp.zeros_like(low_NT)
    elif loss == "kl_cov":
        loss_NT, selected_NT = kl_cov_loss(logp_NT, old_logp_NT, ratio_NT, adv_N, maskf_NT, cov)
        low_NT = high_NT = dual_NT = jnp.zeros(loss_NT.shape, bool)
    else:
        loss_NT, low_NT, high_NT, dual_NT = clipped_surrogate(
            ratio_NT, adv_N[:, None], clip_low=clip_low, clip_high=clip_high,
            dual_clip=dual_clip
        )
        if loss == "clip_cov":
            selected_NT = clip_cov_detached(logp_NT, old_logp_NT, adv_N, maskf_NT,
                                            low_NT | high_NT | dual_NT, cov)
            loss_NT = jnp.where(selected_NT, 0.0, loss_NT)
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
    if selected_NT is not None:
        sums["cov_selected"] = jnp.sum(selected_NT * maskf_NT)
    return numerator, sums


def combine_sums(a, b):
    """Merge two `sums` dicts of policy_loss_terms (micro-batch accumulation)."""
    return {k: jnp.maximum(a[k], b[k]) if k == "ratio_max" else a[k] + b[k] for k in a}


def finalize_metrics(sums, *, dual_clip=None):
    """Means over valid tokens: clip_frac/low, clip_frac/high, ratio/mean, ratio/max; plus
    clip_frac/dual (with dual_clip) and clip_frac/cov (tokens the covariance rule selected)."""
    tokens = jnp.maximum(sums["tokens"], 1.0)
    metrics = {
        "clip_frac/low": sums["clip_low"] / tokens,
        "clip_frac/high": sums["clip_high"] / tokens,
        "ratio/mean": sums["ratio_sum"] / tokens,
        "ratio/max": sums["ratio_max"],
    }
    if dual_clip is not None:
        metrics["clip_frac/dual"] = sums["clip_dual"] / tokens
    if "cov_selected" in sums:
        metrics["clip_frac/cov"] = sums["cov_selected"] / tokens
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
    loss="ppo",
    cov=CovConfig(),
):
    """Policy-gradient loss of a whole minibatch -> (loss, metrics).

    logp_NT: log pi_theta of the sampled tokens; old_logp_NT: log pi_old (no gradient);
    adv_N: one advantage per rollout, broadcast to its tokens; mask_NT: 1 for completion tokens
    up to and including EOS. `level="sequence"` is GSPO (use its small clip range, e.g.
    3e-4/4e-4). `loss` and `cov` as in `policy_loss_terms`. Metrics are means over valid
    tokens.
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
        loss=loss,
        cov=cov,
    )
    loss = numerator / agg_normaliser(mask_NT, agg)
    return loss, finalize_metrics(sums, dual_clip=dual_clip)
