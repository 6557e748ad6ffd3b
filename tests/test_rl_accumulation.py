"""Exact aggregation under gradient accumulation: 1, 2 or 4 micro-batches of unequal lengths
give the full-minibatch loss and gradient, for every aggregation mode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reason_jax import rl
from test_rl_toy_model import apply_fn, init_params, make_batch


def _inputs(n=8, t=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    lengths[0] = t  # at least one full row, others shorter
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    old = rng.normal(size=(n, t)).astype(np.float32) * 0.3 - 1.0
    logp = old + rng.normal(size=(n, t)).astype(np.float32) * 0.3
    adv = rng.normal(size=n).astype(np.float32)
    return jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask)


@pytest.mark.parametrize("agg", rl.AGG_MODES)
@pytest.mark.parametrize("level", rl.LEVELS)
def test_terms_split_equals_full(agg, level):
    logp, old, adv, mask = _inputs()
    kwargs = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg, level=level)

    def full(lp):
        return rl.policy_loss(lp, old, adv, mask, **kwargs)[0]

    def split(lp, bounds):
        norm = rl.agg_normaliser(mask, agg)  # of the whole minibatch
        total = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            num, _ = rl.policy_loss_terms(lp[a:b], old[a:b], adv[a:b], mask[a:b], **kwargs)
            total = total + num / norm
        return total

    loss, grad = jax.value_and_grad(full)(logp)
    for bounds in ([0, 8], [0, 3, 8], [0, 1, 2, 5, 8]):  # 1, 2, 4 unequal micro-batches
        loss_s, grad_s = jax.value_and_grad(split)(logp, bounds)
        np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
        np.testing.assert_allclose(grad_s, grad, rtol=1e-6, atol=1e-9)


# The two modes whose normaliser depends on how tokens fall into rows; the other two are
# covered through the same code by test_terms_split_equals_full (1, 2 and 4 micro-batches).
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_train_step_micro_batches_equal_full(agg):
    """SGD with lr 1 makes the parameter change the exact accumulated gradient."""
    batch = make_batch(8, seed=4)  # rows have unequal completion lengths
    opt = optax.sgd(1.0)
    results = []
    for micro in (1, 4):  # 2 is covered by test_terms_split_equals_full
        step = rl.make_train_step(apply_fn, opt, rl.StepConfig(
            micro_batches=micro, agg=agg, beta=0.1, entropy_coef=0.01, recompute_old_logp=False))
        params = init_params()
        state, metrics = step(rl.create_train_state(params, opt), batch)
        grads = jax.tree.map(lambda old, new: old - new, init_params(), state.params)
        results.append((grads, metrics))
    (g1, m1) = results[0]
    for g, m in results[1:]:
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac/low", "clip_frac/high",
                  "ratio/mean", "ratio/max", "grad_norm"):
            np.testing.assert_allclose(m[k], m1[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_split_sixteen_sixths_not_two_and_a_half():
    l_NT = jnp.array([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 2.0, 6.0]])
    m_NT = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # r = 1 and A = -1 make the per-token surrogate 1; scale by l through the advantage of
    # one-token rows: row (i, t) -> a row of its own with A = -l.
    valid = np.asarray(m_NT).reshape(-1) > 0
    adv = -np.asarray(l_NT).reshape(-1)[valid]
    z = jnp.zeros((len(adv), 1))
    ones = jnp.ones((len(adv), 1))
    full, _ = rl.policy_loss(z, z, jnp.asarray(adv), ones)
    np.testing.assert_allclose(full, 16 / 6, rtol=1e-6)
    norm = rl.agg_normaliser(ones, "token-mean")
    parts = [rl.policy_loss_terms(z[a:b], z[a:b], jnp.asarray(adv[a:b]), ones[a:b])[0]
             for a, b in ((0, 2), (2, 6))]  # sequence 1's tokens, then sequence 2's
    np.testing.assert_allclose(sum(parts) / norm, 16 / 6, rtol=1e-6)
