"""Countdown (four numbers 1-9, a target 0-999) on a laptop CPU: SFT cold start, then RL with
one of five algorithms.

Run (the default variant is `dapo`, which is also what `reason-jax train` runs with no config):
    reason-jax train --config configs/countdown.py --workdir runs/countdown_dapo
    reason-jax train --config configs/countdown.py:grpo --workdir runs/countdown_grpo
    reason-jax train --config configs/countdown.py:drgrpo --workdir runs/countdown_drgrpo
    reason-jax train --config configs/countdown.py:gspo --workdir runs/countdown_gspo
    reason-jax train --config configs/countdown.py:cispo --workdir runs/countdown_cispo
then `reason-jax eval --config configs/countdown.py --workdir runs/countdown_dapo`.

Any key can be overridden, e.g. `--config.rl.clip_high=0.3 --config.steps=100`.
The recipe itself (schema defaults + the algorithm preset) is `reason_jax.config.recipes`.
"""

from reason_jax.config.recipes import countdown


def get_config(arg: str | None = None):
    return countdown(arg)
