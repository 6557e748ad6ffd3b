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


def test_length_grouped_order_makes_homogeneous_micro_batches():
    lengths = np.array([7, 1, 5, 3, 8, 2, 6, 4, 9, 1, 3, 5, 7, 2, 4, 6])
    order = rl.length_grouped_order(lengths, num_minibatches=2, micro_batches=2, data_shards=2)
    assert sorted(order) == list(range(16))
    for d in range(2):  # rows never leave their data shard
        assert set(order[d * 8:(d + 1) * 8]) == set(range(d * 8, (d + 1) * 8))
    permuted = lengths[order]
    # Residue class m + 2c (minibatch m, micro-batch c) of each shard: the short rows in
    # micro-batch 0, the long ones in micro-batch 1.
    for d in range(2):
        block = permuted[d * 8:(d + 1) * 8]
        micro0 = np.concatenate([block[r::4] for r in (0, 1)])
        micro1 = np.concatenate([block[r::4] for r in (2, 3)])
        assert micro0.max() <= micro1.min()


@pytest.mark.parametrize("agg", rl.AGG_MODES)
def test_length_trimmed_micro_batches_equal_unpadded_reference(agg):
    """Rows grouped by length and trimmed to buckets give the loss and gradient of the plain
    full-width minibatch (the unpadded reference), within 1e-6 relative, in every mode."""
    from test_rl_toy_model import T

    batch = make_batch(16, seed=9)
    lengths = np.asarray(batch["mask_NT"].sum(1)).astype(int)
    order = rl.length_grouped_order(lengths, num_minibatches=1, micro_batches=4)
    data = {k: v[order] for k, v in batch.items()}
    data["old_logp_NT"] = data.pop("sampler_logp_NT")
    assert len(set(rl.length_buckets(T, 3))) == 3
    out = []
    for buckets, micro in ((1, 1), (3, 4)):
        cfg = rl.StepConfig(micro_batches=micro, length_buckets=buckets, agg=agg, beta=0.1,
                            entropy_coef=0.01)
        fn = jax.jit(lambda p, d, cfg=cfg: rl.accumulate(p, d, apply_fn=apply_fn, cfg=cfg))
        out.append(fn(init_params(), data))
    (g_ref, loss_ref, sums_ref, _), (g, loss, sums, _) = out
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(np.abs(a).max()))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for k in sums_ref:
        np.testing.assert_allclose(sums[k], sums_ref[k], rtol=1e-6, err_msg=k)


def test_trimming_really_shortens_the_forward():
    """The micro-batch forward runs on S + t columns, t the bucket of its longest row."""
    from test_rl_toy_model import S, T

    widths = []

    def spy(params, tokens_NX, positions_NX, valid_NX):
        widths.append(tokens_NX.shape[1])
        return apply_fn(params, tokens_NX, positions_NX, valid_NX)

    cfg = rl.StepConfig(micro_batches=2, length_buckets=3, recompute_old_logp=False)
    opt = optax.sgd(0.1)
    jax.eval_shape(rl.make_train_step(spy, opt, cfg), rl.create_train_state(init_params(), opt),
                   make_batch(8, with_ref=False))
    assert sorted(set(widths)) == [S + t for t in rl.length_buckets(T, 3)]
