"""From a loaded config to the values a run uses: the algorithm preset, then explicit keys.

`resolve(cfg)` fills every `rl` key the config left at None from the preset named by
`rl.algo` (so `--config.rl.algo=grpo` switches algorithm while explicit keys still win), and
picks the rollout-correction default from the compute dtype: TIS with C = 2 where the sampler
and the learner run in bfloat16 (their log-probs differ by numerics), none in float32. It is
idempotent. `step_config(cfg)` then builds the frozen `rl.StepConfig` the step takes.
"""

from __future__ import annotations

import dataclasses

from reason_jax.rl.presets import ALIASES, get_preset
from reason_jax.rl.step_config import FIELDS, StepConfig


def resolve(cfg) -> None:
    """Fill the preset's values into `cfg.rl` in place (keys already set are kept)."""
    r = cfg.rl
    r.algo = ALIASES.get(r.algo, r.algo)
    preset = get_preset(r.algo)
    if r.get("rollout_correction") is None:
        low_precision = "float32" not in (cfg.model.dtype, cfg.model.param_dtype)
        # TIS needs the learner's pi_old; a config that turned recomputing off keeps it off.
        wanted = low_precision and r.get("recompute_old_logp") is not False
        r.rollout_correction = "tis" if wanted else preset.rollout_correction
    for name in FIELDS:
        if name in r and r[name] is None:
            value = getattr(preset, name)
            if value is not None:
                r[name] = value


def step_config(cfg) -> StepConfig:
    """The run's StepConfig (`cfg` resolved first if it was not)."""
    resolve(cfg)
    r = cfg.rl
    values = {f.name: r[f.name] for f in dataclasses.fields(StepConfig) if f.name in r}
    # Log-probs are of the distribution tokens were drawn from: logits / tau; greedy is tau 1.
    tau = float(cfg.rollout.temperature)
    return StepConfig(**values, temperature=tau if tau > 0 else 1.0)


def rl_optimizer(cfg):
    """The RL optimizer. Its schedule's clock counts optimizer updates, ppo_epochs x
    num_minibatches of them per RL step, so its length must count them too (counting RL
    steps would end a cosine schedule after steps / (E*M) RL steps)."""
    from reason_jax.rl.optimizer import make_optimizer

    o, step = cfg.optimizer, step_config(cfg)
    updates = max(cfg.steps, 1) * step.ppo_epochs * step.num_minibatches
    return make_optimizer(o.lr, o.warmup_steps, updates, o.schedule, o.weight_decay, o.b1, o.b2,
                          o.grad_clip)


def verifier_options(cfg) -> dict:
    """Options every scoring call passes to the verifier (training and eval alike):
    `verifier.answer_format` demands an answer format ("boxed", "answer_line",
    "boxed,answer_line": the first found wins); empty leaves extraction to the verifier."""
    fmt = tuple(f.strip() for f in cfg.verifier.answer_format.split(",") if f.strip())
    if not fmt:
        return {}
    return {"answer_format": fmt[0] if len(fmt) == 1 else fmt}
