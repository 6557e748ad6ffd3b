"""The jitted RL update: PPO epochs x minibatches x gradient-accumulation micro-batches.

Dimensions: N rollouts in the rollout batch, M = N / num_minibatches rows per minibatch,
C = micro_batches per minibatch, S prompt bucket length, T response length, L = S + T, V vocab.

Model-agnostic: the model is `apply_fn(params, tokens_NL, positions_NL, valid_NL) -> logits_NLV`
with `params` any pytree (e.g. the state half of `nnx.split(model)`).

Exactness: every loss term is "sum of per-row numerators / normaliser of the whole minibatch"
(aggregation.py); each micro-batch contributes grad(numerator_c / normaliser) and the sum over
micro-batches (and over data-parallel shards, which jnp.sum handles under jit) is exactly the
full-minibatch gradient, whatever the aggregation mode and however tokens are distributed.

Old log-probs (`recompute_old_logp`, default True): the step recomputes log pi_old with the
current params (one extra forward pass, no backward) before its first update instead of trusting
the sampler's log-probs. The sampler runs with another sharding, maybe another dtype and a fused
decode kernel, so its log-probs differ from the training forward by numerics; with those as
pi_old the ratio starts != 1 and the clip measures sampler/trainer mismatch rather than the
policy's own movement. Recomputed, the first update's ratio is exactly 1. Sampler log-probs
(`recompute_old_logp=False`, `old_logp_NT` in the batch) are only exactly on-policy when
ppo_epochs = num_minibatches = 1 and the sampler computes the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import flax.struct

from reason_jax.rl.aggregation import agg_normaliser, agg_numerator, check_agg
from reason_jax.rl.kl import KL_KINDS, kl_penalty
from reason_jax.rl.optimizer import current_learning_rate
from reason_jax.rl.policy_loss import LEVELS, combine_sums, finalize_metrics, policy_loss_terms
from reason_jax.rl.rollout_batch import completion_logprobs, get_field, merge_rows, split_rows

# Keys of an `rl` config section (and of presets) that make_train_step understands.
TRAIN_STEP_KEYS = (
    "ppo_epochs",
    "num_minibatches",
    "micro_batches",
    "clip_low",
    "clip_high",
    "dual_clip",
    "agg",
    "level",
    "beta",
    "kl_kind",
    "entropy_coef",
    "temperature",
    "recompute_old_logp",
)


@flax.struct.dataclass
class TrainState:
    """params: any pytree; opt_state: the optax state; step: optimizer updates applied."""

    params: object
    opt_state: object
    step: jax.Array


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


def step_kwargs(rl_config) -> dict:
    """The subset of an `rl` config / preset dict that make_train_step takes."""
    return {k: rl_config[k] for k in TRAIN_STEP_KEYS if k in rl_config}


def make_train_step(
    apply_fn,
    optimizer: optax.GradientTransformation,
    *,
    ppo_epochs: int = 1,
    num_minibatches: int = 1,
    micro_batches: int = 1,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    level: str = "token",
    beta: float = 0.0,
    kl_kind: str = "k3",
    entropy_coef: float = 0.0,
    temperature: float = 1.0,
    recompute_old_logp: bool = True,
    state_shardings=None,
    batch_sharding=None,
    donate: bool = True,
):
    """-> jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

    batch: RolloutBatch or dict with tokens_NL, positions_NL, valid_NL, mask_NT, adv_N,
    old_logp_NT (unless recompute_old_logp), ref_logp_NT (only when beta > 0; otherwise never
    read, and no reference forward pass exists anywhere in the step).
    N must divide into num_minibatches * micro_batches parts (times the data-parallel size
    when sharded). Minibatch c holds rows c, c + K, ... (fixed order, deterministic); every
    epoch visits the minibatches in the same order.

    Loss per minibatch: pg + beta * KL(kl_kind) - entropy_coef * entropy, all aggregated with
    `agg`. An update whose loss or gradient norm is not finite is skipped (params and
    optimizer state kept) and counted in `nonfinite_skipped` (= `skipped_steps`).

    Metrics (means over the applied updates, except ratio/max = max, counts = sums): loss,
    pg_loss, kl (beta > 0), entropy, grad_norm (before clipping), clip_frac/low,
    clip_frac/high, ratio/mean, ratio/max, learning_rate (of the last update), updates,
    skipped_steps, nonfinite_skipped.

    state_shardings (e.g. from train_state_shardings) and batch_sharding (e.g.
    NamedSharding(mesh, P("data")), applied to every batch leaf's leading axis) become the jit
    in/out shardings; micro-batches are constrained to batch_sharding too.
    """
    check_agg(agg)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kl_kind!r}; valid: {', '.join(KL_KINDS)}")
    use_kl = beta != 0.0
    parts = num_minibatches * micro_batches
    loss_kwargs = dict(
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg=agg, level=level
    )

    def constrain(tree):
        if batch_sharding is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, batch_sharding)

    def micro_loss(params, micro, normaliser):
        T = micro["mask_NT"].shape[1]
        logp_NT, entropy_NT = completion_logprobs(
            apply_fn, params, micro, T, temperature=temperature
        )
        mask_NT = micro["mask_NT"].astype(jnp.float32)
        pg_num, sums = policy_loss_terms(
            logp_NT, micro["old_logp_NT"], micro["adv_N"], mask_NT, **loss_kwargs
        )
        total_num = pg_num
        sums = dict(sums, pg_num=pg_num)
        if use_kl:
            kl_NT = kl_penalty(logp_NT, micro["ref_logp_NT"], kl_kind)
            total_num = total_num + beta * agg_numerator(kl_NT, mask_NT, agg)
            sums["kl_sum"] = jnp.sum(jnp.where(mask_NT > 0, jax.lax.stop_gradient(kl_NT), 0.0))
        if entropy_coef:
            total_num = total_num - entropy_coef * agg_numerator(entropy_NT, mask_NT, agg)
        sums["entropy_sum"] = jnp.sum(jnp.where(mask_NT > 0, jax.lax.stop_gradient(entropy_NT), 0))
        return total_num / normaliser, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    sum_keys = ["tokens", "clip_low", "clip_high", "clip_dual", "ratio_sum", "ratio_max"]
    sum_keys += ["pg_num", "entropy_sum"] + (["kl_sum"] if use_kl else [])

    def update(carry, minibatch):
        params, opt_state, step = carry
        normaliser = agg_normaliser(minibatch["mask_NT"], agg)

        def accumulate(acc, micro):
            grads_acc, loss_acc, sums_acc = acc
            (loss, sums), grads = grad_fn(params, constrain(micro), normaliser)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
            sums_acc = combine_sums(sums_acc, sums)
            return (grads_acc, loss_acc + loss, sums_acc), None

        micros = jax.tree.map(lambda x: split_rows(x, micro_batches), minibatch)
        # float32 accumulators: summing C bfloat16 gradients would round at every add.
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        sums0 = {k: jnp.zeros((), jnp.float32) for k in sum_keys}
        (grads, loss, sums), _ = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32), sums0), micros
        )

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Back to the parameter dtype so the optimizer state keeps its dtypes (scan carry).
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

        def keep(new, old):
            # A non-finite update leaves params and optimizer state exactly as they were.
            return jnp.where(finite, new, old).astype(old.dtype)

        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        step = step + finite.astype(step.dtype)

        tokens = jnp.maximum(sums["tokens"], 1.0)
        metrics = dict(finalize_metrics(sums, dual_clip=dual_clip))
        metrics.update(
            loss=loss,
            pg_loss=sums["pg_num"] / normaliser,
            entropy=sums["entropy_sum"] / tokens,
            grad_norm=grad_norm,
            learning_rate=current_learning_rate(opt_state),
            applied=finite.astype(jnp.float32),
        )
        if use_kl:
            metrics["kl"] = sums["kl_sum"] / tokens
        return (params, opt_state, step), metrics

    def step_fn(state: TrainState, batch):
        tokens_NL = get_field(batch, "tokens_NL")
        n, _ = tokens_NL.shape
        if n % parts:
            raise ValueError(
                f"{n} rollouts do not split into num_minibatches={num_minibatches} x "
                f"micro_batches={micro_batches} equal parts"
            )
        names = ["tokens_NL", "positions_NL", "valid_NL", "mask_NT", "adv_N"]
        if not recompute_old_logp:
            names.append("old_logp_NT")
        if use_kl:
            names.append("ref_logp_NT")
        data = {}
        for name in names:
            value = get_field(batch, name)
            if value is None:
                why = "beta > 0" if name == "ref_logp_NT" else "recompute_old_logp=False"
                raise ValueError(f"the batch has no {name!r}, needed because {why}")
            data[name] = value
        T = data["mask_NT"].shape[1]

        if recompute_old_logp:
            # Chunked like the micro-batches so this forward never holds more logits than one
            # training micro-batch does.
            def old_logp(chunk):
                chunk = constrain(chunk)
                return completion_logprobs(
                    apply_fn, state.params, chunk, T, temperature=temperature
                )[0]

            fields = {k: data[k] for k in ("tokens_NL", "positions_NL", "valid_NL")}
            chunks = jax.tree.map(lambda x: split_rows(x, parts), fields)
            data["old_logp_NT"] = jax.lax.stop_gradient(merge_rows(jax.lax.map(old_logp, chunks)))

        minibatches = jax.tree.map(lambda x: split_rows(x, num_minibatches), data)

        def epoch(carry, _):
            return jax.lax.scan(update, carry, minibatches)

        carry = (state.params, state.opt_state, state.step)
        (params, opt_state, step), per_update = jax.lax.scan(
            epoch, carry, None, length=ppo_epochs
        )
        new_state = TrainState(params=params, opt_state=opt_state, step=step)
        return new_state, _summarise(per_update)

    jit_kwargs = {}
    if state_shardings is not None or batch_sharding is not None:
        jit_kwargs["in_shardings"] = (state_shardings, batch_sharding)
        jit_kwargs["out_shardings"] = (state_shardings, None)
    return jax.jit(step_fn, donate_argnums=(0,) if donate else (), **jit_kwargs)


def _summarise(per_update):
    """[epochs, minibatches] per-update metrics -> one value each over applied updates."""
    applied = per_update.pop("applied")
    n_applied = jnp.sum(applied)
    skipped = applied.size - n_applied
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
    out["skipped_steps"] = skipped
    out["nonfinite_skipped"] = skipped
    return out
