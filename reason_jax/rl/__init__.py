"""RL from verifiable rewards: advantages, losses, KL, overlong shaping, dynamic sampling and
the jitted train step. See docs/algorithms.md for the formulas as implemented."""

from reason_jax.rl.advantages import STD_MODES, group_advantages
from reason_jax.rl.aggregation import AGG_MODES, agg_normaliser, agg_numerator, aggregate
from reason_jax.rl.dynamic_sampling import DynamicSamplingError, GroupAccumulator, filter_groups
from reason_jax.rl.entropy import entropy_from_logits
from reason_jax.rl.kl import KL_KINDS, kl_penalty
from reason_jax.rl.optimizer import current_learning_rate, make_optimizer, make_schedule
from reason_jax.rl.overlong import overlong_filter, overlong_penalty
from reason_jax.rl.policy_loss import (
    LEVELS,
    clipped_surrogate,
    combine_sums,
    finalize_metrics,
    policy_loss,
    policy_loss_terms,
)
from reason_jax.rl.presets import DAPO, DR_GRPO, GRPO, GSPO, PRESETS, get_preset
from reason_jax.rl.rollout_batch import (
    RolloutBatch,
    completion_logprobs,
    make_logprob_fn,
)
from reason_jax.rl.train_step import (
    TRAIN_STEP_KEYS,
    TrainState,
    create_train_state,
    make_train_step,
    step_kwargs,
    train_state_shardings,
)

__all__ = [
    "AGG_MODES",
    "DAPO",
    "DR_GRPO",
    "DynamicSamplingError",
    "GRPO",
    "GSPO",
    "GroupAccumulator",
    "KL_KINDS",
    "LEVELS",
    "PRESETS",
    "RolloutBatch",
    "STD_MODES",
    "TRAIN_STEP_KEYS",
    "TrainState",
    "agg_normaliser",
    "agg_numerator",
    "aggregate",
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
    "kl_penalty",
    "make_logprob_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "overlong_filter",
    "overlong_penalty",
    "policy_loss",
    "policy_loss_terms",
    "step_kwargs",
    "train_state_shardings",
]
