"""Per-token KL estimators between the policy and a frozen reference policy.

Dimensions: N rollouts, T response length. lp = log pi_theta(token), rlp = log pi_ref(token),
for tokens sampled from pi_old ~ pi_theta (Schulman's estimators).
"""

from __future__ import annotations

import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3", "abs")
K3_MAX = 10.0


def kl_penalty(logp_NT, ref_logp_NT, kind: str = "k3"):
    """Per-token KL estimate; aggregated like the policy loss and weighted by `beta`.

    k1 = lp - rlp (unbiased, can be negative); abs = |lp - rlp|; k2 = (lp - rlp)^2 / 2;
    k3 = exp(rlp - lp) - (rlp - lp) - 1 (unbiased, always >= 0; GRPO's choice). The
    difference is clamped to +-20 before exp, and k3 itself to at most 10 (verl).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}; valid: {', '.join(KL_KINDS)}")
    diff_NT = logp_NT.astype(jnp.float32) - ref_logp_NT.astype(jnp.float32)
    if kind == "k1":
        return diff_NT
    if kind == "abs":
        return jnp.abs(diff_NT)
    if kind == "k2":
        return 0.5 * diff_NT**2
    neg_NT = jnp.clip(-diff_NT, -20.0, 20.0)
    # The input clamp alone still allows exp(20) ~ 4.9e8 from one stale token; clamp the
    # estimate too, at verl's bound (its low_var_kl), so one token cannot dominate the loss.
    return jnp.minimum(jnp.exp(neg_NT) - neg_NT - 1.0, K3_MAX)
