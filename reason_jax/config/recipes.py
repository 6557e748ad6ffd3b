"""The built-in countdown recipe and its algorithm variants.

It lives in the package so that `reason-jax train` with no `--config` works from any install;
`configs/countdown.py` is its command-line entry point.
"""

from __future__ import annotations

from reason_jax.config.schema import base_config
from reason_jax.rl.presets import ALIASES

VARIANTS = ("grpo", "dapo", "drgrpo", "gspo", "cispo")


def countdown(variant: str | None = None):
    """The schema's defaults plus the algorithm `variant` (`rl.algo`) and the few `rl` keys
    this task sets whatever the algorithm."""
    variant = ALIASES.get(variant, variant) or "dapo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown countdown variant {variant!r}; one of {list(VARIANTS)}")
    c = base_config()
    c.rl.algo = variant
    # Four numbers (schema default data.countdown.numbers): ~28,500 problems, none memorised,
    # so what RL learns is arithmetic that carries to held-out problems. Under 10 minutes on
    # 2 cores: 1,000 SFT steps (~4.5 min; the cold start only has to make success non-rare),
    # then up to 400 RL steps; the whole-run budget stops RL in time on a slower machine
    # (with a last checkpoint and held-out eval: ~15 s more).
    c.sft.steps = 1000
    c.steps = 400
    c.time_budget_s = 570.0
    # One update per rollout batch: the sampler's log-probs are exactly on-policy, so the
    # extra forward pass of recomputing them buys nothing here.
    c.rl.recompute_old_logp = False
    # After the cold start the policy solves most *training* problems, so most groups have
    # zero accuracy spread; a generation batch costs ~30 ms here, so allow many of them
    # before dynamic sampling gives up.
    c.rl.max_gen_batches = 20
    # The overlong window of a 16-token task (the paper's 4096 fits 20k-token answers).
    c.rl.overlong_cache_len = 4
    # Held-out pass@1 beside train accuracy in curves.png: the generalisation gap, live.
    c.eval.every = 100
    return c
