"""RL from verifiable rewards: advantages, losses, KL, overlong shaping, dynamic sampling and
the jitted train step. See docs/algorithms.md for the formulas as implemented."""

from reason_jax.rl.advantages import (
    ADV_ESTIMATORS,
    STD_MODES,
    advantages,
    group_advantages,
    passk_advantages,
)
from reason_jax.rl.aggregation import AGG_MODES, agg_normaliser, agg_numerator, aggregate
from reason_jax.rl.dynamic_sampling import DynamicSamplingError, GroupAccumulator, filter_groups
from reason_jax.rl.entropy import entropy_from_logits
from reason_jax.rl.entropy_control import CovConfig, token_covariance
from reason_jax.rl.kl import KL_KINDS, kl_penalty
from reason_jax.rl.optimizer import current_learning_rate, make_optimizer, make_schedule
from reason_jax.rl.overlong import overlong_filter, overlong_penalty
from reason_jax.rl.policy_loss import (
    LEVELS,
    LOSSES,
    cispo_surrogate,
    clipped_surrogate,
    combine_sums,
    finalize_metrics,
    policy_loss,
    policy_loss_terms,
)
from reason_jax.rl.presets import CISPO, DAPO, DR_GRPO, GRPO, GSPO, PRESETS, get_preset
from reason_jax.rl.rollout_batch import (
    RolloutBatch,
    chunked_logprobs,
    completion_logprobs,
    length_buckets,
    length_grouped_order,
    make_logprob_fn,
    row_layout,
    switch_on_length,
    trim,
)
from reason_jax.rl.step_config import FILTER_METRICS, ROLLOUT_CORRECTIONS, StepConfig
from reason_jax.rl.train_step import (
    StepShardings,
    TrainState,
    accumulate,
    create_train_state,
    guarded_update,
    make_train_step,
    micro_batch_loss,
    mismatch,
    train_state_shardings,
)

__all__ = [
    "ADV_ESTIMATORS",
    "AGG_MODES",
    "CISPO",
    "CovConfig",
    "DAPO",
    "DR_GRPO",
    "DynamicSamplingError",
    "FILTER_METRICS",
    "GRPO",
    "GSPO",
    "GroupAccumulator",
    "KL_KINDS",
    "LEVELS",
    "LOSSES",
    "PRESETS",
    "ROLLOUT_CORRECTIONS",
    "RolloutBatch",
    "STD_MODES",
    "StepConfig",
    "StepShardings",
    "TrainState",
    "accumulate",
    "advantages",
    "agg_normaliser",
    "agg_numerator",
    "aggregate",
    "chunked_logprobs",
    "cispo_surrogate",
    "clipped_surrogate",
    "combine_sums",
    "completion_logprobs",
    "create_train_state",
    "current_learning_rate",
    "entropy_from_logits",
    "filter_groups",
    "finalize_metrics",
    "get_preset",
    "group_advantages",
    "guarded_update",
    "kl_penalty",
    "length_buckets",
    "length_grouped_order",
    "make_logprob_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "micro_batch_loss",
    "mismatch",
    "overlong_filter",
    "overlong_penalty",
    "passk_advantages",
    "policy_loss",
    "policy_loss_terms",
    "row_layout",
    "switch_on_length",
    "token_covariance",
    "trim",
    "train_state_shardings",
]
