"""`StepConfig`: everything one RL step needs to know about the algorithm, in one typed value.

The `rl` section of a run config is resolved once (an algorithm preset, then the keys the
config sets explicitly) into a frozen `StepConfig`, validated here. The train step, the rollout
shaping and the bench all take it whole, so an algorithm is one value, a preset is one instance
(`presets.py`), and an ablation is `dataclasses.replace(preset, clip_high=0.35)`.
"""

from __future__ import annotations

import dataclasses

from reason_jax.rl.advantages import ADV_ESTIMATORS, STD_MODES
from reason_jax.rl.aggregation import AGG_MODES
from reason_jax.rl.entropy_control import CovConfig
from reason_jax.rl.kl import KL_KINDS
from reason_jax.rl.policy_loss import LEVELS, LOSSES

ROLLOUT_CORRECTIONS = ("none", "tis", "mis")
FILTER_METRICS = ("accuracy", "reward")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One RL algorithm, fully specified. Field groups:

    update: ppo_epochs x num_minibatches x micro_batches updates per rollout batch;
      length_buckets > 1 groups rows of similar length into micro-batches and trims each to
      the smallest of that many lengths holding its longest row (compute follows real tokens;
      one compiled branch per bucket);
    surrogate: loss ("ppo", "cispo", "clip_cov", "kl_cov": policy_loss.py), clip_low /
      clip_high (clip-higher; CISPO's weight bounds), dual_clip (None: off), agg
      (aggregation.py), level ("token", or "sequence" for GSPO);
    entropy control (Clip-Cov / KL-Cov, entropy_control.py; verl's names and defaults):
      clip_cov_ratio, clip_cov_lb, clip_cov_ub; kl_cov_ratio, kl_cov_coef;
    regularisers: beta x KL(kl_kind) to the reference policy, entropy_coef x entropy bonus
      (aggregated with `agg`, so per token under token-mean: docs/algorithms.md);
    pi_old: temperature (the sampling temperature: logits are divided by it wherever a
      log-prob is computed), recompute_old_logp, rollout_correction ("tis": truncated token
      weights, "mis": drop sequences) with cap rollout_correction_cap (REFERENCE.md);
    rewards and advantages: reward_correct / reward_incorrect, adv_estimator ("grpo", or
      "passk": the leave-one-out pass@k advantage, advantages.py), std / adv_eps, overlong_shaping
      (cache_len, factor) and overlong_filter;
    dynamic sampling: on/off, filter_metric, max_gen_batches per step, max_skipped_steps in a
      row before the run stops.
    """

    ppo_epochs: int = 1
    num_minibatches: int = 1
    micro_batches: int = 1
    length_buckets: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    agg: str = "token-mean"
    level: str = "token"
    loss: str = "ppo"
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    kl_cov_coef: float = 0.1
    beta: float = 0.0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    temperature: float = 1.0
    recompute_old_logp: bool = True
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0
    adv_estimator: str = "grpo"
    std: str = "unbiased"
    adv_eps: float = 1e-6
    reward_correct: float = 1.0
    reward_incorrect: float = 0.0
    overlong_shaping: bool = False
    overlong_cache_len: int = 0
    overlong_factor: float = 1.0
    overlong_filter: bool = False
    dynamic_sampling: bool = False
    filter_metric: str = "accuracy"
    max_gen_batches: int = 1
    max_skipped_steps: int = 10

    def __post_init__(self):
        def fail(msg):
            raise ValueError(msg)

        for name in ("ppo_epochs", "num_minibatches", "micro_batches", "length_buckets",
                     "max_gen_batches", "max_skipped_steps"):
            if int(getattr(self, name)) < 1:
                fail(f"rl.{name}={getattr(self, name)} must be >= 1")
        _one_of("loss", self.loss, LOSSES)
        if self.loss == "cispo":
            # A weight bound, not a trust region: clip_low >= 1 means no lower bound.
            if not self.clip_low >= 0:
                fail(f"rl.clip_low={self.clip_low} must be >= 0 (>= 1: no lower clip)")
        elif not 0 <= self.clip_low < 1:
            fail(f"rl.clip_low={self.clip_low} must be in [0, 1)")
        if not self.clip_high >= 0:
            fail(f"rl.clip_high={self.clip_high} must be >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            fail(f"rl.dual_clip={self.dual_clip} must be > 1 (or None)")
        if self.dual_clip is not None and self.loss in ("cispo", "kl_cov"):
            fail(f"rl.dual_clip caps the PPO surrogate; rl.loss={self.loss!r} has none")
        _one_of("agg", self.agg, AGG_MODES)
        _one_of("level", self.level, LEVELS)
        if self.level != "token" and self.loss != "ppo":
            fail(f"rl.level={self.level!r} (GSPO) works with rl.loss='ppo' only")
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            if not 0 < getattr(self, name) <= 1:
                fail(f"rl.{name}={getattr(self, name)} must be in (0, 1]")
        if not self.clip_cov_lb < self.clip_cov_ub:
            fail(f"rl.clip_cov_lb={self.clip_cov_lb} must be < rl.clip_cov_ub="
                 f"{self.clip_cov_ub}")
        if self.kl_cov_coef < 0:
            fail(f"rl.kl_cov_coef={self.kl_cov_coef} must be >= 0")
        _one_of("adv_estimator", self.adv_estimator, ADV_ESTIMATORS)
        _one_of("kl_kind", self.kl_kind, KL_KINDS)
        _one_of("std", self.std, STD_MODES)
        _one_of("rollout_correction", self.rollout_correction, ROLLOUT_CORRECTIONS)
        _one_of("filter_metric", self.filter_metric, FILTER_METRICS)
        if self.beta < 0:
            fail(f"rl.beta={self.beta} must be >= 0")
        if self.temperature <= 0:
            fail(f"temperature={self.temperature} must be > 0 (greedy sampling uses 1)")
        if self.rollout_correction != "none":
            if not self.recompute_old_logp:
                fail(f"rl.rollout_correction={self.rollout_correction!r} compares the sampler's "
                     "log-probs with the learner's pi_old, so it needs "
                     "rl.recompute_old_logp=True")
            if self.rollout_correction_cap <= 1:
                fail(f"rl.rollout_correction_cap={self.rollout_correction_cap} must be > 1")
        if self.overlong_cache_len < 0:
            fail(f"rl.overlong_cache_len={self.overlong_cache_len} must be >= 0 (0: auto)")

    @property
    def cov(self) -> CovConfig:
        """Clip-Cov / KL-Cov hyperparameters, as policy_loss_terms takes them."""
        return CovConfig(*(getattr(self, name) for name in CovConfig._fields))

    @property
    def uses_kl(self) -> bool:
        return self.beta != 0.0

    @property
    def needs_sampler_logp(self) -> bool:
        """The batch must carry the sampler's log-probs (`rollout_logp_NT`)."""
        return not self.recompute_old_logp or self.rollout_correction != "none"

    def overlong_window(self, max_new_tokens: int) -> int:
        """The soft overlong window L_c in tokens; 0 means a fifth of the maximum length (the
        DAPO paper's 4096 of 20480)."""
        return int(self.overlong_cache_len) or max(1, int(max_new_tokens) // 5)

    def replace(self, **changes) -> "StepConfig":
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(StepConfig))


def _one_of(name, value, valid):
    if value not in valid:
        raise ValueError(f"rl.{name}={value!r} is not one of {list(valid)}")
