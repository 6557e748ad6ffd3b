"""The jitted train step: sharded == single device, on-policy gradient, beta = 0, NaN skip,
compile once."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reason_jax import rl
from test_rl_toy_model import T, apply_fn, init_params, make_batch

STEP = rl.StepConfig(ppo_epochs=2, num_minibatches=2, micro_batches=2, beta=0.04,
                     entropy_coef=0.01, recompute_old_logp=False, dual_clip=3.0)


def _copy(tree):
    # The step donates its state, so keep the caller's arrays out of it.
    return jax.tree.map(jnp.copy, tree)


def _tree_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_sharded_matches_single_device():
    opt = rl.make_optimizer(1e-2, warmup_steps=2, total_steps=10, weight_decay=0.1)
    batch = make_batch(16)

    single = rl.make_train_step(apply_fn, opt, STEP)
    state1, m1 = single(rl.create_train_state(init_params(), opt), batch)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    param_shardings = {
        "emb_VD": NamedSharding(mesh, P(None, "fsdp")),
        "pos_LD": NamedSharding(mesh, P(None, "fsdp")),
        "out_DV": NamedSharding(mesh, P("fsdp", None)),
    }
    params = jax.device_put(init_params(), param_shardings)
    state_shardings = rl.train_state_shardings(params, opt, param_shardings)
    state = jax.jit(rl.create_train_state, static_argnums=1,
                    out_shardings=state_shardings)(params, opt)
    assert state.opt_state[1].inner_state[0].mu["out_DV"].sharding.spec == P("fsdp", None)
    batch_sharding = NamedSharding(mesh, P("data"))
    sharded = rl.make_train_step(apply_fn, opt, STEP,
                                 rl.StepShardings(state_shardings, batch_sharding))
    state2, m2 = sharded(state, jax.device_put(batch, batch_sharding))

    assert state2.params["out_DV"].sharding.spec == P("fsdp", None)
    _tree_close(state1.params, state2.params, rtol=1e-5, atol=1e-7)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert int(state2.step) == 4 and float(m1["updates"]) == 4
    assert set(m1) >= {"loss", "pg_loss", "kl", "entropy", "grad_norm", "clip_frac/low",
                       "clip_frac/high", "ratio/mean", "ratio/max", "learning_rate",
                       "nonfinite_skipped"}
    np.testing.assert_allclose(m1["learning_rate"], 1e-2 * np.cos(np.pi / 16) ** 2, rtol=1e-5)


def test_on_policy_gradient_is_plain_policy_gradient():
    """old == new: no clip binds and the update is -sum A grad logp / count (SGD, lr 1)."""
    batch = make_batch(8, seed=1, with_ref=False)
    step = rl.make_train_step(apply_fn, optax.sgd(1.0),
                              rl.StepConfig(recompute_old_logp=True))
    params = init_params(1)
    state, m = step(rl.create_train_state(_copy(params), optax.sgd(1.0)), batch)
    assert float(m["clip_frac/low"]) == 0.0 and float(m["clip_frac/high"]) == 0.0
    np.testing.assert_allclose(m["ratio/mean"], 1.0, rtol=1e-6)

    def plain_pg(p):
        logp, _ = rl.completion_logprobs(apply_fn, p, batch, T)
        mask = batch["mask_NT"]
        return -jnp.sum(batch["adv_N"][:, None] * logp * mask) / jnp.sum(mask)

    grads = jax.jit(jax.grad(plain_pg))(params)
    update = jax.tree.map(lambda new, old: old - new, state.params, params)
    _tree_close(update, grads, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta, recompute, calls", [(0.0, True, 2), (0.0, False, 1),
                                                    (0.1, False, 1)])
def test_apply_fn_only_for_the_policy(beta, recompute, calls):
    traced = []

    def counting_apply(params, *args):
        traced.append(params)
        return apply_fn(params, *args)

    batch = make_batch(8, seed=2, with_ref=beta > 0)
    if recompute:
        del batch["sampler_logp_NT"]  # not needed when the step recomputes it
    opt = optax.adam(1e-3)
    step = rl.make_train_step(counting_apply, opt,
                              rl.StepConfig(beta=beta, recompute_old_logp=recompute))
    # Tracing is enough to see every forward pass (eval_shape: no compile, keeps tests fast).
    _, m = jax.eval_shape(step, rl.create_train_state(init_params(), opt),
                          rl.RolloutBatch(**batch))
    # One trace per forward kind: the recompute map body, the micro-batch grad body. A
    # reference forward would add one more; the reference log-probs only come in the batch.
    assert len(traced) == calls
    assert ("kl" in m) == (beta > 0)


def test_missing_ref_logp_raises():
    batch = make_batch(8, with_ref=False)
    opt = optax.adam(1e-3)
    step = rl.make_train_step(apply_fn, opt, rl.StepConfig(beta=0.1))
    with pytest.raises(ValueError, match="ref_logp_NT"):
        step(rl.create_train_state(init_params(), opt), batch)


def test_nonfinite_update_is_skipped():
    opt = rl.make_optimizer(1e-2, warmup_steps=0, total_steps=10)
    batch = make_batch(8, seed=3, with_ref=False)
    batch["adv_N"] = batch["adv_N"].at[0].set(jnp.nan)  # row 0 -> minibatch 0 of 2
    step = rl.make_train_step(apply_fn, opt,
                              rl.StepConfig(num_minibatches=2, recompute_old_logp=False))
    params = init_params()
    state, m = step(rl.create_train_state(_copy(params), opt), batch)
    assert int(m["nonfinite_skipped"]) == 1
    assert int(state.step) == 1
    assert np.isfinite(float(m["loss"]))  # the mean covers the applied update only

    batch["adv_N"] = jnp.full_like(batch["adv_N"], jnp.nan)
    state0 = rl.create_train_state(_copy(params), opt)
    opt_before = jax.tree.map(np.array, state0.opt_state)
    state, m = step(state0, batch)
    assert int(m["nonfinite_skipped"]) == 2 and int(state.step) == 0
    _tree_close(state.params, params, rtol=0)
    _tree_close(state.opt_state, opt_before, rtol=0)


def test_compiles_once():
    traces = []

    def counting_apply(params, *args):
        traces.append(1)
        return apply_fn(params, *args)

    opt = rl.make_optimizer(1e-3, warmup_steps=1, total_steps=5)
    step = rl.make_train_step(counting_apply, opt, rl.StepConfig(micro_batches=2))
    state = rl.create_train_state(init_params(), opt)
    for seed in range(3):
        batch = make_batch(8, seed=seed, with_ref=False)
        state, _ = step(state, batch)
    assert len(traces) == 2  # traced on the first call only (recompute body + grad body)
    assert int(state.step) == 3


def test_bfloat16_params_keep_dtype_and_train():
    """bf16 params: dtypes preserved, and no NaN from bf16 Adam hyperparameters (b2 -> 1.0)."""
    opt = rl.make_optimizer(1e-3, warmup_steps=1, total_steps=10, weight_decay=0.1)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params())
    step = rl.make_train_step(apply_fn, opt, rl.StepConfig(num_minibatches=2, micro_batches=2))
    state, m = step(rl.create_train_state(params, opt), make_batch(8, with_ref=False))
    assert int(m["nonfinite_skipped"]) == 0 and int(state.step) == 2
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.params))
