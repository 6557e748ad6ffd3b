"""Countdown-3 on a laptop CPU: SFT cold start, then RL with one of four algorithms.

Run (the default variant is `dapo`):
    reason-jax train --config configs/countdown.py --workdir runs/countdown_dapo
    reason-jax train --config configs/countdown.py:grpo --workdir runs/countdown_grpo
    reason-jax train --config configs/countdown.py:drgrpo --workdir runs/countdown_drgrpo
    reason-jax train --config configs/countdown.py:gspo --workdir runs/countdown_gspo
then `reason-jax eval --config configs/countdown.py --workdir runs/countdown_dapo`.

Any key can be overridden, e.g. `--config.rl.clip_high=0.3 --config.steps=100`.
"""

from reason_jax.rl.presets import PRESETS
from reason_jax.train.base_config import base_config

_SKIP = {"temperature"}  # sampling temperature lives in `rollout`


def apply_preset(rl_cfg, name: str) -> None:
    """Copy an algorithm preset (plain data from reason_jax.rl.presets) into `rl`."""
    for key, value in PRESETS[name].items():
        if key in _SKIP:
            continue
        if key == "overlong_cache_len" and value > 1000:
            continue  # the paper's 4096-token window; we keep the schema's small-task value
        if key == "max_gen_batches":
            value = max(value, rl_cfg.max_gen_batches)
        rl_cfg[key] = value
    rl_cfg.algo = name


def get_config(arg: str | None = None):
    variant = arg or "dapo"
    if variant not in ("grpo", "dapo", "drgrpo", "gspo"):
        raise ValueError(f"unknown countdown variant {variant!r}: grpo | dapo | drgrpo | gspo")
    c = base_config()
    apply_preset(c.rl, {"drgrpo": "dr_grpo"}.get(variant, variant))
    # The policy already sees the whole solution after SFT: keep the old-logp pass cheap.
    c.rl.recompute_old_logp = False
    if variant == "dapo":
        c.rl.overlong_shaping = True
        c.rl.overlong_cache_len = 4
    return c
