"""The built-in countdown recipe and its algorithm variants.

It lives in the package so that `reason-jax train` with no `--config` works from any install;
`configs/countdown.py` is its command-line entry point.
"""

from __future__ import annotations

from reason_jax.rl.presets import PRESETS
from reason_jax.train.base_config import base_config

VARIANTS = {"grpo": "grpo", "dapo": "dapo", "drgrpo": "dr_grpo", "gspo": "gspo"}
_SKIP = {"temperature"}  # the sampling temperature lives in `rollout`


def apply_preset(rl_cfg, name: str) -> None:
    """Copy an algorithm preset (plain data from reason_jax.rl.presets) into `rl`."""
    for key, value in PRESETS[name].items():
        if key in _SKIP:
            continue
        if key == "overlong_cache_len":
            continue  # the paper's 4096-token window does not fit a 16-token task
        if key == "max_gen_batches":
            value = max(value, rl_cfg.max_gen_batches)
        rl_cfg[key] = value
    rl_cfg.algo = name


def countdown(variant: str | None = None):
    variant = variant or "dapo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown countdown variant {variant!r}; one of {sorted(VARIANTS)}")
    c = base_config()
    apply_preset(c.rl, VARIANTS[variant])
    # One update per rollout batch: the sampler's log-probs are exactly on-policy, so the
    # extra forward pass of recomputing them buys nothing here.
    c.rl.recompute_old_logp = False
    # After the cold start the policy solves most *training* problems, so most groups have
    # zero accuracy spread; a generation batch costs ~30 ms here, so allow many of them
    # before dynamic sampling gives up.
    c.rl.max_gen_batches = 20
    return c
