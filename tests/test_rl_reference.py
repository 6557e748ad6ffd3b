"""Every worked number of REFERENCE.md: advantages, surrogate (+ gradients), aggregation, KL,
overlong penalty, entropy, GSPO, the group filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reason_jax import rl


# ---- advantages ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rewards, std, expected",
    [
        ([1, 0, 0, 1], "unbiased", [0.8660239038, -0.8660239038, -0.8660239038, 0.8660239038]),
        ([1, 0, 0, 1], "biased", [0.999998, -0.999998, -0.999998, 0.999998]),
        ([1, 0, 0, 1], "none", [0.5, -0.5, -0.5, 0.5]),
        ([1, 0, 0, 0], "unbiased", [1.499997, -0.499999, -0.499999, -0.499999]),
        ([1, 0, 0, 0], "biased", [1.7320468, -0.5773489, -0.5773489, -0.5773489]),
        ([1, 0, 0, 0], "none", [0.75, -0.25, -0.25, -0.25]),
        ([1, 1, 1, 1], "unbiased", [0, 0, 0, 0]),
        ([1, 1, 1, 1], "biased", [0, 0, 0, 0]),
        ([1, 1, 1, 1], "none", [0, 0, 0, 0]),
    ],
)
def test_advantage_table(rewards, std, expected):
    adv = rl.group_advantages(jnp.array(rewards, jnp.float32), 4, std=std, eps=1e-6)
    np.testing.assert_allclose(adv, expected, rtol=2e-6, atol=1e-6)


def test_advantages_per_group_and_never_nan():
    rewards = jnp.array([1, 0, 0, 1, 0.1, 0.1, 0.1, 0.1], jnp.float32)  # 0.1 sums inexactly
    adv = rl.group_advantages(rewards, 4)
    np.testing.assert_allclose(adv[:4], [0.8660239, -0.8660239, -0.8660239, 0.8660239], rtol=1e-6)
    assert np.all(np.asarray(adv[4:]) == 0.0)
    for std in rl.STD_MODES:  # groups of one: A = R / (1 + eps) (R for "none"), no NaN
        adv1 = rl.group_advantages(jnp.array([2.0, -1.0]), 1, std=std)
        scale = 1.0 if std == "none" else 1 / (1 + 1e-6)
        np.testing.assert_allclose(adv1, np.array([2.0, -1.0]) * scale, rtol=1e-7)
    with pytest.raises(ValueError, match="unbiased, biased, none"):
        rl.group_advantages(rewards, 4, std="mad")


# ---- clipped surrogate -----------------------------------------------------------------------
SURROGATE_ROWS = [  # r, A, (value, grad-is-zero) for 0.2/0.2, 0.2/0.28, dual clip c=3 (0.2/0.28)
    (1.25, 1.0, (-1.20, True), (-1.25, False), (-1.25, False)),
    (1.35, 1.0, (-1.20, True), (-1.28, True), (-1.28, True)),
    (0.70, 1.0, (-0.70, False), (-0.70, False), (-0.70, False)),
    (0.75, -1.0, (0.80, True), (0.80, True), (0.80, True)),
    (5.0, -1.0, (5.0, False), (5.0, False), (3.0, True)),
]
SETTINGS = [dict(clip_low=0.2, clip_high=0.2), dict(clip_low=0.2, clip_high=0.28),
            dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0)]


@pytest.mark.parametrize("row", SURROGATE_ROWS)
def test_surrogate_values_and_grads(row):
    r, a = row[0], row[1]
    for kwargs, (value, grad_zero) in zip(SETTINGS, row[2:]):
        logp = jnp.log(jnp.array([[r]], jnp.float32))
        old = jnp.zeros((1, 1))
        mask = jnp.ones((1, 1))

        def loss_fn(lp):
            return rl.policy_loss(lp, old, jnp.array([a]), mask, **kwargs)[0]

        loss, grad = jax.value_and_grad(loss_fn)(logp)
        np.testing.assert_allclose(loss, value, rtol=1e-5)
        # d(-r A)/d logp = -r A where the unclipped branch is active, 0 where a clip binds.
        expected_grad = 0.0 if grad_zero else -r * a
        np.testing.assert_allclose(grad[0, 0], expected_grad, rtol=1e-5, atol=1e-7)


def test_clip_fractions():
    r = jnp.array([[1.25, 1.35, 0.70, 0.75, 5.0]])
    adv_rows = jnp.array([1.0, 1.0, 1.0, -1.0, -1.0])
    # One token per row so each row has its own advantage.
    logp, old, mask = jnp.log(r).T, jnp.zeros((5, 1)), jnp.ones((5, 1))
    _, m = rl.policy_loss(logp, old, adv_rows, mask, clip_low=0.2, clip_high=0.28)
    np.testing.assert_allclose(m["clip_frac/high"], 1 / 5)  # only r = 1.35, A > 0
    np.testing.assert_allclose(m["clip_frac/low"], 1 / 5)  # only r = 0.75, A < 0
    np.testing.assert_allclose(m["ratio/mean"], np.mean([1.25, 1.35, 0.7, 0.75, 5.0]), rtol=1e-6)
    np.testing.assert_allclose(m["ratio/max"], 5.0, rtol=1e-6)
    _, m = rl.policy_loss(logp, old, adv_rows, mask, clip_low=0.2, clip_high=0.2)
    np.testing.assert_allclose(m["clip_frac/high"], 2 / 5)


def test_log_ratio_clamped():
    logp = jnp.array([[100.0, -100.0]])
    loss, m = rl.policy_loss(logp, jnp.zeros((1, 2)), jnp.array([-1.0]), jnp.ones((1, 2)))
    assert np.isfinite(loss)
    np.testing.assert_allclose(m["ratio/max"], np.exp(20.0), rtol=1e-5)


def test_unknown_names():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        rl.policy_loss(x, x, jnp.zeros(1), x, agg="mean")
    with pytest.raises(ValueError, match="token, sequence"):
        rl.policy_loss(x, x, jnp.zeros(1), x, level="group")
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        rl.kl_penalty(x, x, kind="k4")


# ---- aggregation -----------------------------------------------------------------------------
L_NT = jnp.array([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 2.0, 6.0]])
M_NT = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "agg, expected",
    [("token-mean", 16 / 6), ("seq-mean-token-mean", 2.5), ("seq-mean-token-sum", 8.0),
     ("seq-mean-token-sum-norm", 4.0)],
)
def test_aggregation_reference(agg, expected):
    np.testing.assert_allclose(rl.aggregate(L_NT, M_NT, agg), expected, rtol=1e-6)
    # The additive form: two micro-batches of one sequence each, one global normaliser.
    norm = rl.agg_normaliser(M_NT, agg)
    parts = [rl.agg_numerator(L_NT[i : i + 1], M_NT[i : i + 1], agg) for i in range(2)]
    np.testing.assert_allclose(sum(parts) / norm, expected, rtol=1e-6)


def test_token_mean_split_is_not_mean_of_means():
    norm = rl.agg_normaliser(M_NT, "token-mean")
    split = sum(rl.agg_numerator(L_NT[i : i + 1], M_NT[i : i + 1], "token-mean") for i in range(2))
    np.testing.assert_allclose(split / norm, 16 / 6, rtol=1e-6)
    naive = np.mean([rl.aggregate(L_NT[i : i + 1], M_NT[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(naive, 2.5, rtol=1e-6)  # what per-micro-batch averaging gives


def test_policy_loss_aggregation_matches_reference():
    # r = 1 everywhere and A = -1: every valid token's loss is 1, so the modes differ only by
    # their normalisers: token-mean 6/6, seq-mean-token-mean 1, token-sum 3, sum-norm 6/4.
    z = jnp.zeros((2, 4))
    adv = -jnp.ones(2)
    for agg, expected in [("token-mean", 1.0), ("seq-mean-token-mean", 1.0),
                          ("seq-mean-token-sum", 3.0), ("seq-mean-token-sum-norm", 1.5)]:
        loss, _ = rl.policy_loss(z, z, adv, M_NT, agg=agg)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_empty_sequences_do_not_dilute():
    mask = M_NT.at[0].set(0.0)
    np.testing.assert_allclose(rl.aggregate(L_NT, mask, "seq-mean-token-mean"), 3.0)
    np.testing.assert_allclose(rl.aggregate(L_NT, jnp.zeros_like(M_NT)), 0.0)


# ---- GSPO ------------------------------------------------------------------------------------
def test_gspo_sequence_ratio():
    logp = jnp.array([[0.1, 0.3, 9.0], [0.0, 0.0, 0.0]])  # 9.0 is padding: must not count
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = jnp.array([1.0, -1.0])
    kwargs = dict(clip_low=3e-4, clip_high=4e-4, level="sequence", agg="seq-mean-token-mean")
    loss, m = rl.policy_loss(logp, jnp.zeros_like(logp), adv, mask, **kwargs)
    s0 = np.exp(0.2)  # exp(mean(0.1, 0.3)), clipped to 1 + 4e-4 for A > 0
    expected = np.mean([-min(s0, 1 + 4e-4) * 1.0, 1.0])
    np.testing.assert_allclose(loss, expected, atol=1e-6)
    np.testing.assert_allclose(m["clip_frac/high"], 2 / 5)  # seq 0's two tokens
    np.testing.assert_allclose(m["ratio/max"], s0, rtol=1e-6)

    # Unclipped gradient: d/dlogp_t of -s A = -s A / len for each valid token.
    grad = jax.grad(lambda lp: rl.policy_loss(lp, jnp.zeros_like(lp), adv, mask,
                                              level="sequence", clip_low=10.0, clip_high=10.0,
                                              agg="seq-mean-token-mean")[0])(logp * 0.0)
    np.testing.assert_allclose(grad, [[-0.25, -0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]], rtol=1e-6)


# ---- KL, overlong, entropy, filter -----------------------------------------------------------
@pytest.mark.parametrize("kind, expected",
                         [("k1", 0.5), ("k2", 0.125), ("k3", 0.1065306597), ("abs", 0.5)])
def test_kl_estimators(kind, expected):
    out = rl.kl_penalty(jnp.array([[-1.0]]), jnp.array([[-1.5]]), kind=kind)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_overlong_penalty():
    pen = rl.overlong_penalty(jnp.array([10, 16, 17, 19, 20, 25]), max_len=20, cache_len=4)
    np.testing.assert_allclose(pen, [0.0, 0.0, -0.25, -0.75, -1.0, -1.0])
    half = rl.overlong_penalty(jnp.array([17]), max_len=20, cache_len=4, factor=0.5)
    np.testing.assert_allclose(half, [-0.125])


def test_overlong_filter():
    mask = jnp.ones((3, 2))
    out = rl.overlong_filter(mask, jnp.array([False, True, False]))
    np.testing.assert_array_equal(out, [[1, 1], [0, 0], [1, 1]])


def test_entropy():
    np.testing.assert_allclose(rl.entropy_from_logits(jnp.zeros(4)), 1.3862944, rtol=1e-6)
    np.testing.assert_allclose(rl.entropy_from_logits(jnp.array([1.0, 2.0, 3.0])), 0.8323956,
                               rtol=1e-6)
    assert np.isfinite(rl.entropy_from_logits(jnp.array([0.0, -1e30, 1e4])))


def test_filter_groups():
    acc = np.array([1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1], np.float32)
    np.testing.assert_array_equal(rl.filter_groups(acc, 3), [True, False, False, True])
    np.testing.assert_array_equal(rl.filter_groups(jnp.asarray(acc), 6), [True, True])
    np.testing.assert_array_equal(rl.filter_groups(jnp.asarray(acc), 2),
                                  [True, False, False, False, False, True])


@pytest.mark.parametrize("level", rl.LEVELS)
def test_nonfinite_padding_does_not_leak(level):
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    old_ok = jnp.array([[-1.1, -1.9, -0.5]])
    old_inf = old_ok.at[0, 2].set(-jnp.inf)  # sampler log-prob of a padding token
    f = lambda old: rl.policy_loss(logp, old, jnp.array([1.0]), mask, level=level)[0]  # noqa
    np.testing.assert_allclose(f(old_inf), f(old_ok), rtol=1e-6)
    g = jax.grad(lambda lp: rl.policy_loss(lp, old_inf, jnp.array([1.0]), mask, level=level)[0])
    assert np.all(np.isfinite(g(logp)))
