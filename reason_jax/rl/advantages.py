"""Group-relative advantages (GRPO, Dr. GRPO).

Dimensions: B prompts, G samples per prompt (group), N = B*G rollouts (rows of one prompt are
adjacent, as the sampler emits them).
"""

from __future__ import annotations

import jax.numpy as jnp

STD_MODES = ("unbiased", "biased", "none")


def group_advantages(rewards_N, group_size: int, *, std: str = "unbiased", eps: float = 1e-6):
    """A_i = (R_i - mean(R_group)) / (std(R_group) + eps), one scalar per rollout.

    `std="unbiased"` divides the variance by G-1 (verl, TRL), `"biased"` by G, `"none"` skips the
    division (Dr. GRPO: A_i = R_i - mean). A group whose rewards are all equal gets exactly 0
    (its centred rewards may be a few ulps off zero, and dividing those by eps would blow them
    up). A group of size 1 has no baseline: A = R / (1 + eps) (or R with `std="none"`), i.e. mean
    0 and std 1, rather than the NaN an unbiased std of one sample would give.
    """
    if std not in STD_MODES:
        raise ValueError(f"unknown std mode {std!r}; valid: {', '.join(STD_MODES)}")
    rewards_N = jnp.asarray(rewards_N, jnp.float32)
    (n,) = rewards_N.shape
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    if group_size == 1:
        return rewards_N if std == "none" else rewards_N / (1.0 + eps)

    rewards_BG = rewards_N.reshape(-1, group_size)
    centred_BG = rewards_BG - rewards_BG.mean(axis=1, keepdims=True)
    if std == "none":
        adv_BG = centred_BG
    else:
        ddof = 1 if std == "unbiased" else 0
        var_B1 = jnp.sum(centred_BG**2, axis=1, keepdims=True) / (group_size - ddof)
        adv_BG = centred_BG / (jnp.sqrt(var_B1) + eps)
    all_equal_B1 = jnp.max(rewards_BG, axis=1, keepdims=True) == jnp.min(
        rewards_BG, axis=1, keepdims=True
    )
    return jnp.where(all_equal_B1, 0.0, adv_BG).reshape(-1)
