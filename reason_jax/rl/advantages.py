"""Group-relative advantages (GRPO, Dr. GRPO) and the pass@k-aware leave-one-out advantage.

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
        adv_BG = centred_BG / (_std_B1(centred_BG, std) + eps)
    all_equal_B1 = jnp.max(rewards_BG, axis=1, keepdims=True) == jnp.min(
        rewards_BG, axis=1, keepdims=True
    )
    return jnp.where(all_equal_B1, 0.0, adv_BG).reshape(-1)


def _std_B1(centred_BG, std: str):
    """Per-group standard deviation of centred rewards: variance over G - 1 ("unbiased") or
    G ("biased")."""
    ddof = 1 if std == "unbiased" else 0
    var_B1 = jnp.sum(centred_BG**2, axis=1, keepdims=True) / (centred_BG.shape[1] - ddof)
    return jnp.sqrt(var_B1)


def passk_advantages(rewards_N, group_size: int, *, std: str = "unbiased", eps: float = 1e-6):
    """Pass@k-aware advantage: A_i = max_j R_j - max_{j != i} R_j, then / (std(R_group) + eps).

    The leave-one-out estimator of the gradient of a k-sample objective with k = G and f = max
    (pass@G for 0/1 rewards): Tang, Zheng, Synnaeve, Munos, "Optimizing Language Models for
    Inference Time Objectives using Reinforcement Learning" (ICML 2025, arXiv 2503.19595),
    the paper verl's `compute_grpo_passk_outcome_advantage` (`grpo_passk`) cites. Only a
    group's unique best sample gets a non-zero advantage, r_max - r_second_max (verl's form);
    a tie for the best gives the whole group 0, as verl's top-2 does. `std` normalises like
    `group_advantages` (verl's `norm_adv_by_std_in_grpo` is "unbiased"; "none" skips it).
    Needs G >= 2 (with one sample there is no "other" best), as verl does.
    """
    if std not in STD_MODES:
        raise ValueError(f"unknown std mode {std!r}; valid: {', '.join(STD_MODES)}")
    rewards_N = jnp.asarray(rewards_N, jnp.float32)
    (n,) = rewards_N.shape
    if group_size < 2 or n % group_size:
        raise ValueError(f"the pass@k advantage needs groups of >= 2 samples; got {n} rewards "
                         f"in groups of {group_size}")
    rewards_BG = rewards_N.reshape(-1, group_size)
    top2_B2 = -jnp.sort(-rewards_BG, axis=1)[:, :2]
    best_B1, second_B1 = top2_B2[:, :1], top2_B2[:, 1:]
    # Leaving out sample i changes the group's best only when i is its unique maximum.
    unique_best_BG = (rewards_BG == best_B1) & (second_B1 < best_B1)
    adv_BG = jnp.where(unique_best_BG, best_B1 - second_B1, 0.0)
    if std != "none":
        centred_BG = rewards_BG - rewards_BG.mean(axis=1, keepdims=True)
        adv_BG = adv_BG / (_std_B1(centred_BG, std) + eps)
    return adv_BG.reshape(-1)


ADV_ESTIMATORS = ("grpo", "passk")


def advantages(rewards_N, group_size: int, *, estimator: str = "grpo", std: str = "unbiased",
               eps: float = 1e-6):
    """One advantage per rollout by `estimator` (StepConfig.adv_estimator): "grpo" is
    `group_advantages`, "passk" is `passk_advantages`."""
    if estimator == "grpo":
        return group_advantages(rewards_N, group_size, std=std, eps=eps)
    if estimator == "passk":
        return passk_advantages(rewards_N, group_size, std=std, eps=eps)
    raise ValueError(f"unknown advantage estimator {estimator!r}; valid: "
                     f"{', '.join(ADV_ESTIMATORS)}")
