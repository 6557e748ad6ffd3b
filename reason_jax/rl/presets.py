"""Algorithm presets as plain dicts for the `rl` config section.

Keys: those of make_train_step (see train_step.TRAIN_STEP_KEYS; pick them with step_kwargs),
plus `std`/`adv_eps` (group_advantages), `overlong_shaping`, `overlong_cache_len`,
`overlong_factor`, `overlong_filter` (overlong.py), `dynamic_sampling`, `max_gen_batches`
(dynamic_sampling.py), and `reward_correct`/`reward_incorrect` (the correctness reward values
the loop should map verifier outcomes to). A config overrides any key after taking a preset:
    rl = dict(PRESETS["dapo"], beta=0.0)
"""

from __future__ import annotations

_COMMON = dict(
    ppo_epochs=1,
    num_minibatches=1,
    micro_batches=1,
    dual_clip=None,
    level="token",
    kl_kind="k3",
    entropy_coef=0.0,
    temperature=1.0,
    recompute_old_logp=True,
    adv_eps=1e-6,
    overlong_shaping=False,
    overlong_cache_len=0,
    overlong_factor=1.0,
    overlong_filter=False,
    dynamic_sampling=False,
    max_gen_batches=1,
    reward_correct=1.0,
    reward_incorrect=0.0,
)

# DeepSeekMath GRPO: symmetric clip, k3 KL to the reference with beta 0.04, per-sequence means.
GRPO = dict(
    _COMMON,
    clip_low=0.2,
    clip_high=0.2,
    beta=0.04,
    kl_kind="k3",
    agg="seq-mean-token-mean",
    std="unbiased",
)

# DAPO: clip-higher, token-mean, no KL, overlong soft punishment, dynamic sampling, +1/-1.
# (The paper's overlong window is L_max = 20480, L_c = 4096: set overlong_cache_len to your
# max_new_tokens / 5 or so; 4096 is the paper's value.)
DAPO = dict(
    _COMMON,
    clip_low=0.2,
    clip_high=0.28,
    beta=0.0,
    agg="token-mean",
    std="unbiased",
    overlong_shaping=True,
    overlong_cache_len=4096,
    overlong_factor=1.0,
    dynamic_sampling=True,
    max_gen_batches=10,
    reward_correct=1.0,
    reward_incorrect=-1.0,
)

# Dr. GRPO: no std normalisation, token sums over a constant length (removes length bias).
DR_GRPO = dict(
    _COMMON,
    clip_low=0.2,
    clip_high=0.2,
    beta=0.0,
    agg="seq-mean-token-sum-norm",
    std="none",
)

# GSPO: sequence-level (length-normalised) ratio with its own tiny clip range.
GSPO = dict(
    _COMMON,
    clip_low=3e-4,
    clip_high=4e-4,
    beta=0.0,
    level="sequence",
    agg="seq-mean-token-mean",
    std="unbiased",
)

PRESETS = {"grpo": GRPO, "dapo": DAPO, "dr_grpo": DR_GRPO, "gspo": GSPO}


def get_preset(name: str) -> dict:
    """A fresh copy of a preset (safe to modify)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
