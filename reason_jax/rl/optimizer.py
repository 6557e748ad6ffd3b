"""AdamW with global-norm clipping and a linear warm-up + cosine/constant learning rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


def make_schedule(lr, warmup_steps, total_steps, schedule="cosine", final_lr_ratio=0.0):
    """lr(count), count = optimizer updates already applied.

    The warm-up is lr * (count + 1) / warmup_steps so that the very first update already moves
    (a schedule starting at exactly 0 wastes it). Cosine decays from lr at the end of the
    warm-up to lr * final_lr_ratio at `total_steps`, then stays there.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")

    def fn(count):
        count = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (count + 1.0) / max(warmup_steps, 1)) if warmup_steps else 1.0
        if schedule == "constant":
            return lr * warm
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        return lr * jnp.where(count < warmup_steps, warm, cosine)

    return fn


def make_optimizer(
    lr: float,
    warmup_steps: int = 0,
    total_steps: int = 1,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    grad_clip: float | None = 1.0,
    *,
    eps: float = 1e-8,
    final_lr_ratio: float = 0.0,
) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(schedule). grad_clip None/0 disables clipping.

    The learning rate is injected as a hyperparameter so `current_learning_rate(opt_state)`
    can read back the value the last update used (for metrics).
    """
    sched = make_schedule(lr, warmup_steps, total_steps, schedule, final_lr_ratio)
    # Only the learning rate is injected, in float32: injected hyperparameters are otherwise
    # cast to the parameter dtype, and b2 = 0.999 in bfloat16 is 1.0 (Adam's bias correction
    # then divides by zero).
    adamw = optax.inject_hyperparams(
        optax.adamw, static_args=("b1", "b2", "eps", "weight_decay"), hyperparam_dtype=jnp.float32
    )(learning_rate=sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if not grad_clip:
        return adamw
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)


def current_learning_rate(opt_state):
    """Learning rate of the last update from an inject_hyperparams state; NaN if none."""
    # Duck-typed: optax has two such state classes (stateful / stateless hyperparameters).
    is_hp = lambda x: isinstance(getattr(x, "hyperparams", None), dict)  # noqa: E731
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_hp):
        if is_hp(leaf) and "learning_rate" in leaf.hyperparams:
            return jnp.asarray(leaf.hyperparams["learning_rate"], jnp.float32)
    return jnp.asarray(jnp.nan, jnp.float32)
