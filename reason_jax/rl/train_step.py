"""The jitted RL update: PPO epochs x minibatches x gradient-accumulation micro-batches.

Dimensions: N rollouts in the rollout batch, M rows per minibatch, A micro-batches per
minibatch (`micro_batches`), S prompt bucket length, T response length, V vocab. Rows hold the
prompt then the completion: `tokens_NX` with X = S + T columns (`rollout_batch.py`).

The step is composed of small module-level functions, each testable on its own:
  `pi_old`            log pi_old: recomputed with the current params, or the sampler's;
  `mismatch`          rollout/learner mismatch metrics and the TIS weights / MIS mask;
  `micro_batch_loss`  the loss numerator of one micro-batch over the minibatch's normaliser;
  `accumulate`        gradients and metric sums over the micro-batches of one minibatch;
  `guarded_update`    the optax update, skipped whole when the loss or gradient is not finite.
`make_train_step` only composes and jits them.

Exactness: every loss term is "sum of per-row numerators / normaliser of the whole minibatch"
(aggregation.py), so the sum of the micro-batch gradients (and of data-parallel shards, which
jnp.sum handles under jit) is exactly the full-minibatch gradient in every aggregation mode.

pi_old (`recompute_old_logp`, default True): recomputed with the current params before the
first update (one forward pass, no backward), so the first update's ratio is exactly 1 and the
clip measures the policy's own movement, not sampler numerics. The sampler's log-probs then
serve to measure (and, with `rollout_correction`, correct) the rollout/learner mismatch.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from reason_jax.rl.aggregation import agg_normaliser, agg_numerator
from reason_jax.rl.kl import kl_penalty
from reason_jax.rl.optimizer import current_learning_rate
from reason_jax.rl.policy_loss import COV_LOSSES, LOG_RATIO_CLAMP, combine_sums, \
    finalize_metrics, policy_loss_terms
from reason_jax.rl.rollout_batch import chunked_logprobs, completion_logprobs, get_field, \
    length_buckets, split_rows, switch_on_length
from reason_jax.rl.step_config import StepConfig


@flax.struct.dataclass
class TrainState:
    """params: any pytree; opt_state: the optax state; step: optimizer updates applied."""

    params: object
    opt_state: object
    step: jax.Array


class StepShardings(NamedTuple):
    """jit in/out shardings: `state` (e.g. from train_state_shardings) and `batch` (applied to
    every batch leaf's leading axis; micro-batches are constrained to it too)."""

    state: object = None
    batch: object = None


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """Jittable (use jax.jit(..., out_shardings=train_state_shardings(...)) for sharded init)."""
    step = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=optimizer.init(params), step=step)


def train_state_shardings(params, optimizer, params_shardings) -> TrainState:
    """Shardings for a TrainState: optimizer moments follow their parameters, the rest
    (counts, hyperparameters, step) is replicated. `params` may be abstract (eval_shape)."""
    mesh = jax.tree.leaves(params_shardings)[0].mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        opt_abstract,
        params_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(params=params_shardings, opt_state=opt_shardings, step=replicated)


def _constrain(tree, sharding):
    return tree if sharding is None else jax.lax.with_sharding_constraint(tree, sharding)


# ------------------------------------------------------------------------------- the pieces


def pi_old(apply_fn, params, data, cfg: StepConfig, *, parts: int, sharding=None):
    """log pi_old of the completion tokens [N, T]: recomputed in `parts` sequential chunks (so
    this forward never holds more logits than one training micro-batch), or the sampler's."""
    if not cfg.recompute_old_logp:
        return data["sampler_logp_NT"]
    T = data["mask_NT"].shape[1]
    return chunked_logprobs(apply_fn, params, data, T, chunks=parts,
                            temperature=cfg.temperature, sharding=sharding,
                            buckets=length_buckets(T, cfg.length_buckets))


def mismatch(old_logp_NT, sampler_logp_NT, mask_NT, cfg: StepConfig):
    """Rollout/learner mismatch (REFERENCE.md, "Rollout/learner mismatch correction").

    Returns (weight_NT, keep_N, metrics): TIS token weights min(pi_old / pi_sampler, C) (ones
    unless `rollout_correction="tis"`), the MIS keep mask (sequences whose geometric-mean ratio
    leaves [1/C, C] are dropped; all True unless "mis"), and per-step metrics: mean |delta
    log-prob|, max ratio, the sampled-token KL(sampler || learner) and the fraction corrected.
    """
    maskf_NT = mask_NT.astype(jnp.float32)
    valid_NT = maskf_NT > 0
    # where, not *: padding may hold -inf sampler log-probs.
    delta_NT = jnp.where(valid_NT, old_logp_NT - sampler_logp_NT, 0.0)
    ratio_NT = jnp.exp(jnp.clip(delta_NT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    tokens = jnp.maximum(jnp.sum(maskf_NT), 1.0)
    cap = cfg.rollout_correction_cap
    len_N = jnp.sum(maskf_NT, axis=1)
    rho_N = jnp.exp(jnp.clip(jnp.sum(delta_NT, 1) / jnp.maximum(len_N, 1.0), -LOG_RATIO_CLAMP,
                             LOG_RATIO_CLAMP))
    weight_NT = jnp.ones_like(maskf_NT)
    keep_N = jnp.ones(len_N.shape, bool)
    if cfg.rollout_correction == "tis":
        weight_NT = jnp.where(valid_NT, jnp.minimum(ratio_NT, cap), 1.0)
        corrected = jnp.sum((ratio_NT > cap) & valid_NT) / tokens
    elif cfg.rollout_correction == "mis":
        keep_N = ((rho_N >= 1.0 / cap) & (rho_N <= cap)) | (len_N == 0)
        corrected = jnp.mean(~keep_N)
    else:
        corrected = jnp.zeros((), jnp.float32)
    metrics = {
        "mismatch/abs_logp_diff": jnp.sum(jnp.abs(delta_NT)) / tokens,
        "mismatch/ratio_max": jnp.max(jnp.where(valid_NT, ratio_NT, 0.0)),
        # Tokens were drawn from the sampler, so mean(lp_s - lp_old) estimates KL(s || old).
        "mismatch/kl": -jnp.sum(delta_NT) / tokens,
        "mismatch/corrected_frac": corrected.astype(jnp.float32),
    }
    return jax.lax.stop_gradient(weight_NT), keep_N, jax.tree.map(jax.lax.stop_gradient, metrics)


def micro_batch_loss(params, micro, normaliser, *, apply_fn, cfg: StepConfig):
    """-> (loss numerator / minibatch normaliser, metric sums) of one micro-batch.

    Loss: pg + beta * KL(kl_kind) - entropy_coef * entropy, each aggregated with `cfg.agg`.
    """
    T = micro["mask_NT"].shape[1]
    logp_NT, entropy_NT = completion_logprobs(apply_fn, params, micro, T,
                                              temperature=cfg.temperature)
    mask_NT = micro["mask_NT"].astype(jnp.float32)
    pg_num, sums = policy_loss_terms(
        logp_NT, micro["old_logp_NT"], micro["adv_N"], mask_NT, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, agg=cfg.agg, level=cfg.level,
        weight_NT=micro.get("weight_NT"), loss=cfg.loss, cov=cfg.cov)
    total_num = pg_num
    sums = dict(sums, pg_num=pg_num)
    valid_NT = mask_NT > 0
    if cfg.uses_kl:
        kl_NT = kl_penalty(logp_NT, micro["ref_logp_NT"], cfg.kl_kind)
        total_num = total_num + cfg.beta * agg_numerator(kl_NT, mask_NT, cfg.agg)
        sums["kl_sum"] = jnp.sum(jnp.where(valid_NT, jax.lax.stop_gradient(kl_NT), 0.0))
    if cfg.entropy_coef:
        total_num = total_num - cfg.entropy_coef * agg_numerator(entropy_NT, mask_NT, cfg.agg)
    sums["entropy_sum"] = jnp.sum(jnp.where(valid_NT, jax.lax.stop_gradient(entropy_NT), 0.0))
    return total_num / normaliser, sums


def _sum_keys(cfg: StepConfig):
    keys = ["tokens", "clip_low", "clip_high", "clip_dual", "ratio_sum", "ratio_max", "pg_num",
            "entropy_sum"]
    keys += ["cov_selected"] if cfg.loss in COV_LOSSES else []
    return keys + (["kl_sum"] if cfg.uses_kl else [])


def accumulate(params, minibatch, *, apply_fn, cfg: StepConfig, sharding=None):
    """Gradients (float32), loss and metric sums of one minibatch, summed over its
    `cfg.micro_batches` micro-batches with `lax.scan`. Returns (grads, loss, sums, normaliser)."""
    normaliser = agg_normaliser(minibatch["mask_NT"], cfg.agg)
    grad_fn = jax.value_and_grad(micro_batch_loss, has_aux=True)
    T = minibatch["mask_NT"].shape[1]

    def loss_and_grad(micro):
        return grad_fn(params, micro, normaliser, apply_fn=apply_fn, cfg=cfg)

    def body(acc, micro):
        grads_acc, loss_acc, sums_acc = acc
        (loss, sums), grads = switch_on_length(loss_and_grad, _constrain(micro, sharding),
                                               length_buckets(T, cfg.length_buckets), T)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
        return (grads_acc, loss_acc + loss, combine_sums(sums_acc, sums)), None

    micros = jax.tree.map(lambda x: split_rows(x, cfg.micro_batches), minibatch)
    # float32 accumulators: summing A bfloat16 gradients would round at every add.
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    sums0 = {k: jnp.zeros((), jnp.float32) for k in _sum_keys(cfg)}
    (grads, loss, sums), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), sums0),
                                          micros)
    return grads, loss, sums, normaliser


def guarded_update(params, opt_state, step, grads, loss, optimizer):
    """One optax update, applied only when loss and gradient norm are finite: otherwise params,
    optimizer state and the update count stay exactly as they were.
    Returns (params, opt_state, step, finite, grad_norm)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Back to the parameter dtype so the optimizer state keeps its dtypes (scan carry).
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    def keep(new, old):
        return jnp.where(finite, new, old).astype(old.dtype)

    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    return params, opt_state, step + finite.astype(step.dtype), finite, grad_norm


def _update_metrics(sums, loss, normaliser, grad_norm, finite, opt_state, cfg: StepConfig):
    tokens = jnp.maximum(sums["tokens"], 1.0)
    metrics = dict(finalize_metrics(sums, dual_clip=cfg.dual_clip))
    metrics.update(
        loss=loss,
        pg_loss=sums["pg_num"] / normaliser,
        entropy=sums["entropy_sum"] / tokens,
        grad_norm=grad_norm,
        learning_rate=current_learning_rate(opt_state),
        applied=finite.astype(jnp.float32),
    )
    if cfg.uses_kl:
        metrics["kl"] = sums["kl_sum"] / tokens
    return metrics


def _summarise(per_update):
    """[epochs, minibatches] per-update metrics -> one value each over applied updates."""
    applied = per_update.pop("applied")
    n_applied = jnp.sum(applied)
    out = {}
    for name, value in per_update.items():
        if name == "ratio/max":
            out[name] = jnp.max(jnp.where(applied > 0, value, 0.0))
        elif name == "learning_rate":
            out[name] = value.reshape(-1)[-1]
        else:
            # Skipped updates carry NaN/inf by definition; keep them out of the means.
            total = jnp.sum(jnp.where(applied > 0, value, 0.0))
            out[name] = jnp.where(n_applied > 0, total / jnp.maximum(n_applied, 1.0), jnp.nan)
    out["updates"] = jnp.asarray(applied.size, jnp.float32)
    out["nonfinite_skipped"] = applied.size - n_applied
    return out


# ----------------------------------------------------------------------------- composition


def batch_fields(batch, cfg: StepConfig) -> dict:
    """The arrays the step reads, by name, with a clear error for a missing one."""
    names = ["tokens_NX", "positions_NX", "valid_NX", "mask_NT", "adv_N"]
    data = {}
    for name in names:
        data[name] = get_field(batch, name)
    sampler = get_field(batch, "sampler_logp_NT")
    if sampler is not None:
        data["sampler_logp_NT"] = sampler
    elif cfg.needs_sampler_logp:
        why = ("recompute_old_logp=False" if not cfg.recompute_old_logp else
               f"rollout_correction={cfg.rollout_correction!r}")
        raise ValueError(f"the batch has no 'sampler_logp_NT', needed because {why}")
    if cfg.uses_kl:
        data["ref_logp_NT"] = get_field(batch, "ref_logp_NT")
        if data["ref_logp_NT"] is None:
            raise ValueError("the batch has no 'ref_logp_NT', needed because beta > 0")
    missing = [k for k, v in data.items() if v is None]
    if missing:
        raise ValueError(f"the batch has no {missing}")
    return data


def make_train_step(apply_fn, optimizer: optax.GradientTransformation, cfg: StepConfig,
                    shardings: StepShardings | None = None, *, donate: bool = True):
    """-> jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

    apply_fn(params, tokens_NX, positions_NX, valid_NX) -> logits_NXV (any params pytree).
    batch: RolloutBatch or dict (see rollout_batch.RolloutBatch). N must divide into
    num_minibatches x micro_batches parts (times the data-parallel size when sharded).
    Minibatch m holds rows m, m + num_minibatches, ... (fixed order); every epoch visits the
    minibatches in the same order.

    Metrics (means over the applied updates, except ratio/max = max, counts = sums): loss,
    pg_loss, kl (beta > 0), entropy, grad_norm (before clipping), clip_frac/low,
    clip_frac/high, ratio/mean, ratio/max, learning_rate (of the last update), updates,
    nonfinite_skipped, and mismatch/* when the batch has the sampler's log-probs.
    """
    if not isinstance(cfg, StepConfig):
        raise TypeError(f"make_train_step takes a StepConfig, got {type(cfg).__name__}")
    shardings = shardings or StepShardings()
    parts = cfg.num_minibatches * cfg.micro_batches

    def update(carry, minibatch):
        params, opt_state, step = carry
        grads, loss, sums, normaliser = accumulate(params, minibatch, apply_fn=apply_fn,
                                                   cfg=cfg, sharding=shardings.batch)
        params, opt_state, step, finite, grad_norm = guarded_update(params, opt_state, step,
                                                                    grads, loss, optimizer)
        metrics = _update_metrics(sums, loss, normaliser, grad_norm, finite, opt_state, cfg)
        return (params, opt_state, step), metrics

    def step_fn(state: TrainState, batch):
        data = batch_fields(batch, cfg)
        n = data["tokens_NX"].shape[0]
        if n % parts:
            raise ValueError(f"{n} rollouts do not split into num_minibatches="
                             f"{cfg.num_minibatches} x micro_batches={cfg.micro_batches} "
                             "equal parts")
        data["old_logp_NT"] = pi_old(apply_fn, state.params, data, cfg, parts=parts,
                                     sharding=shardings.batch)
        step_metrics = {}
        if cfg.recompute_old_logp and "sampler_logp_NT" in data:
            weight_NT, keep_N, step_metrics = mismatch(data["old_logp_NT"],
                                                       data["sampler_logp_NT"],
                                                       data["mask_NT"], cfg)
            if cfg.rollout_correction == "tis":
                data["weight_NT"] = weight_NT
            elif cfg.rollout_correction == "mis":
                data["mask_NT"] = data["mask_NT"] * keep_N[:, None].astype(data["mask_NT"].dtype)
        data.pop("sampler_logp_NT", None)
        minibatches = jax.tree.map(lambda x: split_rows(x, cfg.num_minibatches), data)

        def epoch(carry, _):
            return jax.lax.scan(update, carry, minibatches)

        carry = (state.params, state.opt_state, state.step)
        (params, opt_state, step), per_update = jax.lax.scan(epoch, carry, None,
                                                             length=cfg.ppo_epochs)
        metrics = _summarise(per_update)
        metrics.update(step_metrics)
        return TrainState(params=params, opt_state=opt_state, step=step), metrics

    jit_kwargs = {}
    if shardings.state is not None or shardings.batch is not None:
        jit_kwargs["in_shardings"] = (shardings.state, shardings.batch)
        jit_kwargs["out_shardings"] = (shardings.state, None)
    return jax.jit(step_fn, donate_argnums=(0,) if donate else (), **jit_kwargs)
