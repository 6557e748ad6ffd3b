"""Algorithm presets: each one a `StepConfig` instance.

A run config picks one with `rl.algo`; every `rl` key the config sets explicitly then wins over
the preset's value (`reason_jax.config.resolve`). In Python:
    step_cfg = DAPO.replace(clip_high=0.35)
"""

from __future__ import annotations

from reason_jax.rl.step_config import StepConfig

# DeepSeekMath GRPO: symmetric clip, k3 KL to the reference with beta 0.04, per-sequence means.
GRPO = StepConfig(
    clip_low=0.2,
    clip_high=0.2,
    beta=0.04,
    kl_kind="k3",
    agg="seq-mean-token-mean",
    std="unbiased",
)

# DAPO: clip-higher, token-mean, no KL, overlong soft punishment, dynamic sampling, +1/-1.
# The paper's overlong window is L_c = 4096 of L_max = 20480; `overlong_cache_len=0` keeps that
# proportion for any length: a fifth of max_new_tokens (StepConfig.overlong_window).
DAPO = StepConfig(
    clip_low=0.2,
    clip_high=0.28,
    beta=0.0,
    agg="token-mean",
    std="unbiased",
    overlong_shaping=True,
    overlong_cache_len=0,
    overlong_factor=1.0,
    dynamic_sampling=True,
    max_gen_batches=10,
    reward_correct=1.0,
    reward_incorrect=-1.0,
)

# Dr. GRPO: no std normalisation, token sums over a constant length (removes length bias).
DR_GRPO = StepConfig(
    clip_low=0.2,
    clip_high=0.2,
    beta=0.0,
    agg="seq-mean-token-sum-norm",
    std="none",
)

# GSPO: sequence-level (length-normalised) ratio with its own tiny clip range.
GSPO = StepConfig(
    clip_low=3e-4,
    clip_high=4e-4,
    beta=0.0,
    level="sequence",
    agg="seq-mean-token-mean",
    std="unbiased",
)

# CISPO (MiniMax-M1, arXiv 2506.13585): the clipped, stop-gradient IS weight times A log pi,
# token-mean, no KL. No lower bound on the weight (eps_low = 1: the paper sets it large; verl's
# example uses 10), eps_high 0.28 (REFERENCE.md). Everything else is DAPO's recipe, so a
# dapo-vs-cispo ablation changes the loss alone.
CISPO = DAPO.replace(loss="cispo", clip_low=1.0, clip_high=0.28)

PRESETS = {"grpo": GRPO, "dapo": DAPO, "drgrpo": DR_GRPO, "gspo": GSPO, "cispo": CISPO}
# One spelling per algorithm; the older one still works.
ALIASES = {"dr_grpo": "drgrpo"}


def get_preset(name: str) -> StepConfig:
    name = ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]
