"""CISPO, Clip-Cov / KL-Cov and the pass@k advantage: hand-derived reference vectors, config
keys, and the per-micro-batch covariance selection.

Sources of the vectors: CISPO from ../shared/REFERENCE.md (MiniMax-M1, arXiv 2506.13585);
Clip-Cov / KL-Cov derived by hand from Cui et al. 2025 (arXiv 2505.22617) and checked line by
line against verl's `compute_policy_loss_clip_cov` / `compute_policy_loss_kl_cov`; the pass@k
advantage from Tang et al. 2025 (arXiv 2503.19595) and verl's
`compute_grpo_passk_outcome_advantage` (verl/trainer/ppo/core_algos.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reason_jax import rl
from reason_jax.config.loading import ConfigError, load_config
from reason_jax.config.resolve import step_config
from reason_jax.run.rollout import train_batch
from test_rl_toy_model import T, apply_fn, init_params, make_batch


@functools.cache
def _compiled(options):
    # Compiled: dispatching the many small ops one by one is slower than compiling them.
    def f(lp, old, adv, mask):
        return rl.policy_loss(lp, old, adv, mask, **dict(options))

    return jax.jit(jax.value_and_grad(f, has_aux=True))


def _loss_and_grad(logp, old, adv, mask, **kwargs):
    (loss, metrics), grad = _compiled(tuple(sorted(kwargs.items())))(logp, old, adv, mask)
    return float(loss), np.asarray(grad), metrics


# ------------------------------------------------------------------------------------ CISPO

# REFERENCE.md: eps_low = 1 (no lower clip), eps_high = 0.28.
@pytest.mark.parametrize("p_new, p_old, adv, loss, grad", [
    (0.3, 0.2, +1.0, 1.5410852, -1.28),  # r = 1.5, weight clipped to 1.28
    (0.1, 0.2, -1.0, -1.1512925, +0.5),  # r = 0.5, no lower clip: weight 0.5
])
def test_cispo_reference(p_new, p_old, adv, loss, grad):
    lp, old = jnp.log(jnp.array([[p_new]])), jnp.log(jnp.array([[p_old]]))
    got, g, _ = _loss_and_grad(lp, old, jnp.array([adv]), jnp.ones((1, 1)), loss="cispo",
                               clip_low=1.0, clip_high=0.28)
    np.testing.assert_allclose(got, loss, rtol=1e-6)
    np.testing.assert_allclose(g, [[grad]], rtol=1e-6)


def test_cispo_keeps_the_gradient_ppo_clips():
    # r = 1.5, A = +1: PPO's clip binds (gradient 0); CISPO's weight is clipped, not the token.
    lp, old = jnp.log(jnp.array([[0.3]])), jnp.log(jnp.array([[0.2]]))
    args = (lp, old, jnp.array([1.0]), jnp.ones((1, 1)))
    _, g_ppo, m_ppo = _loss_and_grad(*args, loss="ppo", clip_low=0.2, clip_high=0.28)
    _, g_cispo, m_cispo = _loss_and_grad(*args, loss="cispo", clip_low=0.2, clip_high=0.28)
    assert g_ppo[0, 0] == 0.0 and g_cispo[0, 0] == pytest.approx(-1.28)
    assert m_ppo["clip_frac/high"] == m_cispo["clip_frac/high"] == 1.0


def test_cispo_clip_fractions_count_the_weight_whatever_the_sign_of_a():
    # ratios 1.5 (A<0), 0.5 (A>0), 1.0: the weight's upper and lower bounds bind on the first
    # two (verl counts ratio != clipped ratio), with eps 0.2 / 0.28.
    old = jnp.log(jnp.array([[0.2, 0.2, 0.2]]))
    lp = jnp.log(jnp.array([[0.3, 0.1, 0.2]]))
    _, _, m = _loss_and_grad(lp, old, jnp.array([-1.0]), jnp.ones((1, 3)), loss="cispo",
                             clip_low=0.2, clip_high=0.28)
    assert float(m["clip_frac/high"]) == pytest.approx(1 / 3)
    _, _, m = _loss_and_grad(lp, old, jnp.array([1.0]), jnp.ones((1, 3)), loss="cispo",
                             clip_low=0.2, clip_high=0.28)
    assert float(m["clip_frac/low"]) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------ Clip-Cov, KL-Cov

# Two rows, lengths 3 and 2, A = [+1, -1]. Means over the 5 valid tokens: A 0.2, logp -1.34.
# cov = [[0.8*0.84, 0.8*0.34, 0.8*-0.66], [-1.2*1.14, -1.2*-1.66]]
#     = [[0.672, 0.272, -0.528], [-1.368, 1.992]].
# kl_cov_ratio 0.5: floor(2.5) = 2 tokens of largest cov: (1, 1) and (0, 0).
# r = exp(logp - old) = [[e^.1, 1, e^-.2], [e^.1, e^-.1]]; loss -A r (no clip), + 0.1 |log r|
# on the two selected tokens:
#   [[-1.1051709 + 0.01, -1, -0.8187308], [1.1051709, 0.9048374 + 0.01]], token-mean / 5.
# d/dlogp = -A r + 0.1 sign(log r) on the selected ones.
KL_LOGP = jnp.array([[-0.5, -1.0, -2.0], [-0.2, -3.0, 0.0]])
KL_OLD = jnp.array([[-0.6, -1.0, -1.8], [-0.3, -2.9, -7.0]])
KL_MASK = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
KL_ADV = jnp.array([1.0, -1.0])


def test_token_covariance_reference():
    np.testing.assert_allclose(rl.token_covariance(KL_LOGP, KL_ADV, KL_MASK),
                               [[0.672, 0.272, -0.528], [-1.368, 1.992, 0.0]], atol=1e-6)


def test_kl_cov_reference():
    loss, g, m = _loss_and_grad(KL_LOGP, KL_OLD, KL_ADV, KL_MASK, loss="kl_cov",
                                cov=rl.CovConfig(kl_cov_ratio=0.5, kl_cov_coef=0.1))
    per_token = [-1.1051709 + 0.01, -1.0, -0.8187308, 1.1051709, 0.9048374 + 0.01]
    np.testing.assert_allclose(loss, sum(per_token) / 5, rtol=1e-6)  # -0.17877868
    np.testing.assert_allclose(g * 5, [[-1.0051709, -1.0, -0.8187308],
                                       [1.1051709, 0.8048374, 0.0]], rtol=1e-6, atol=1e-7)
    assert float(m["clip_frac/cov"]) == pytest.approx(2 / 5)
    assert float(m["clip_frac/low"]) == float(m["clip_frac/high"]) == 0.0  # KL-Cov has no clip


def test_kl_cov_takes_at_least_one_token():
    # verl's default ratio 2e-4 of 5 tokens floors to 0 -> max(., 1) = 1: the top token only.
    _, _, m = _loss_and_grad(KL_LOGP, KL_OLD, KL_ADV, KL_MASK, loss="kl_cov")
    assert float(m["clip_frac/cov"]) == pytest.approx(1 / 5)


# A = [2, -2], logp = [[-0.5, -3.0], [-1.0, -2.5]]; means A 0, logp -1.75:
# cov = [[2.5, -2.5], [-1.5, 1.5]]; within (lb, ub) = (1, 5): (0, 0) and (1, 1). But token
# (1, 1) has r = exp(-0.3) = 0.7408 < 0.8 with A < 0: the PPO clip already holds it, so it is
# no candidate. clip_cov_ratio 0.5 asks for floor(2) = 2 tokens; there is one: (0, 0) leaves
# the loss. Per-token PPO loss [[-2 -> 0, -2], [2, -min(-1.4816, -1.6) = 1.6]]: token-mean
# 1.6 / 4 = 0.4; gradient -A r / 4 = [[0 (dropped), -0.5], [0.5, 0 (clipped)]].
CC_LOGP = jnp.array([[-0.5, -3.0], [-1.0, -2.5]])
CC_OLD = jnp.array([[-0.5, -3.0], [-1.0, -2.2]])
CC_ADV = jnp.array([2.0, -2.0])


def test_clip_cov_reference():
    loss, g, m = _loss_and_grad(CC_LOGP, CC_OLD, CC_ADV, jnp.ones((2, 2)), loss="clip_cov",
                                clip_low=0.2, clip_high=0.28,
                                cov=rl.CovConfig(clip_cov_ratio=0.5))
    np.testing.assert_allclose(loss, 0.4, rtol=1e-6)
    np.testing.assert_allclose(g, [[0.0, -0.5], [0.5, 0.0]], atol=1e-7)
    assert float(m["clip_frac/cov"]) == 0.25 and float(m["clip_frac/low"]) == 0.25


def test_clip_cov_draws_exactly_k_candidates_deterministically():
    # Same tokens, nothing clipped (old = logp): candidates (0, 0) and (1, 1); k = 1 of them.
    mask = jnp.ones((2, 2))
    kwargs = dict(loss="clip_cov", clip_low=0.2, clip_high=0.28,
                  cov=rl.CovConfig(clip_cov_ratio=0.25))
    loss, g, m = _loss_and_grad(CC_LOGP, CC_LOGP, CC_ADV, mask, **kwargs)
    assert float(m["clip_frac/cov"]) == 0.25
    # Full loss -A r summed: -2 -2 +2 +2 = 0; dropping (0, 0) gives +2/4, dropping (1, 1) -2/4.
    assert loss in (pytest.approx(0.5), pytest.approx(-0.5))
    dropped = [(i, j) for i in range(2) for j in range(2) if g[i, j] == 0.0]
    assert len(dropped) == 1 and dropped[0] in ((0, 0), (1, 1))
    again, _, _ = _loss_and_grad(CC_LOGP, CC_LOGP, CC_ADV, mask, **kwargs)
    assert again == loss  # a pure function of the micro-batch
    # Padding columns (what length_buckets trims) change neither the draw nor the loss.
    pad = lambda x, v: jnp.concatenate([x, jnp.full((2, 3), v)], axis=1)  # noqa: E731
    padded, _, _ = _loss_and_grad(pad(CC_LOGP, -9.0), pad(CC_LOGP, -jnp.inf), CC_ADV,
                                  pad(mask, 0.0), **kwargs)
    assert padded == pytest.approx(loss)


def test_clip_cov_draw_varies_with_the_batch():
    # Many candidates, one pick each: different micro-batches pick different positions.
    rng = np.random.default_rng(0)
    picks = set()
    for seed in range(8):
        logp = jnp.asarray(rng.normal(size=(4, 8)) * 2.0 - 2.0, jnp.float32)
        adv = jnp.asarray([3.0, -3.0, 3.0, -3.0])
        _, g, m = _loss_and_grad(logp, logp, adv, jnp.ones((4, 8)), loss="clip_cov",
                                 cov=rl.CovConfig(clip_cov_ratio=1 / 32, clip_cov_lb=-1e9,
                                                  clip_cov_ub=1e9))
        assert float(m["clip_frac/cov"]) == pytest.approx(1 / 32)
        picks.add(int(np.flatnonzero(g.reshape(-1) == 0.0)[0]))
    assert len(picks) > 2


def _minibatch(n=8, seed=3):
    batch = make_batch(n, seed=seed, with_ref=False)
    batch["old_logp_NT"] = batch.pop("sampler_logp_NT")
    return batch


@pytest.mark.parametrize("loss", ["clip_cov", "kl_cov"])
def test_cov_selection_is_per_micro_batch(loss):
    """The rank is taken within each micro-batch: k = max(floor(ratio * valid), 1) tokens per
    micro-batch, and the accumulated loss is the sum of the micro-batches' own one-shot
    numerators over the minibatch normaliser (exact, given the selection)."""
    batch, params = _minibatch(), init_params()
    # A tiny ratio: one token per micro-batch; a wide band, so Clip-Cov has candidates.
    cfg = rl.StepConfig(loss=loss, clip_cov_ratio=1e-3, clip_cov_lb=-1e9, clip_cov_ub=1e9,
                        kl_cov_ratio=1e-3, recompute_old_logp=False)
    norm = rl.agg_normaliser(batch["mask_NT"], cfg.agg)

    @jax.jit
    def one_shot(rows):
        logp, _ = rl.completion_logprobs(apply_fn, params, rows, T)
        return rl.policy_loss_terms(logp, rows["old_logp_NT"], rows["adv_N"], rows["mask_NT"],
                                    loss=loss, cov=cfg.cov)[0]

    for micro in (1, 2, 4):
        c = cfg.replace(micro_batches=micro)
        _, loss_acc, sums, _ = jax.jit(
            lambda p, b, c=c: rl.accumulate(p, b, apply_fn=apply_fn, cfg=c))(params, batch)
        assert float(sums["cov_selected"]) == micro
        expected = 0.0
        for part in range(micro):  # split_rows: part c holds rows c, c + micro, ...
            rows = jax.tree.map(lambda x, part=part: x[part::micro], batch)
            expected += float(one_shot(rows)) / float(norm)
        np.testing.assert_allclose(float(loss_acc), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["cispo", "clip_cov", "kl_cov"])
def test_train_step_with_each_loss(loss):
    batch = make_batch(8, seed=1, with_ref=False)
    opt = rl.make_optimizer(1e-2, 0, 10, "constant", 0.0, 0.9, 0.99, 1.0)
    cfg = rl.StepConfig(loss=loss, micro_batches=2, recompute_old_logp=False,
                        clip_low=1.0 if loss == "cispo" else 0.2, clip_cov_lb=-1e9)
    step = rl.make_train_step(apply_fn, opt, cfg)
    state, metrics = step(rl.create_train_state(init_params(), opt), batch)
    assert int(state.step) == 1 and float(metrics["nonfinite_skipped"]) == 0
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert ("clip_frac/cov" in metrics) == (loss in ("clip_cov", "kl_cov"))


def test_entropy_bonus_under_token_mean_is_the_per_token_mean():
    """Why no separate entropy normalisation key: with token-mean (the default) the bonus is
    entropy_coef x (sum of H over valid tokens / valid tokens) of the whole minibatch, the
    length-normalised bonus, also under gradient accumulation."""
    batch, params = _minibatch(), init_params()
    _, entropy_NT = rl.completion_logprobs(apply_fn, params, batch, T)
    mask = batch["mask_NT"]
    mean_h = float(jnp.sum(entropy_NT * mask) / jnp.sum(mask))
    for micro in (1, 4):
        cfg = rl.StepConfig(micro_batches=micro, recompute_old_logp=False)
        losses = [float(jax.jit(lambda p, b, c=cfg.replace(entropy_coef=coef): rl.accumulate(
            p, b, apply_fn=apply_fn, cfg=c)[1])(params, batch)) for coef in (0.0, 0.1)]
        np.testing.assert_allclose(losses[0] - losses[1], 0.1 * mean_h, rtol=1e-5)


# --------------------------------------------------------------------------- pass@k advantage

# A_i = max R - max_{j != i} R (only a unique best sample is non-zero: r_max - r_second), then
# / (std + 1e-6). [1, 0, 0, 0]: unbiased std 0.5 -> 1 / 0.500001; biased sqrt(3/16).
# [0.5, 1, 0.2, 0]: 1 - 0.5 = 0.5; unbiased std sqrt(0.5675 / 3) = 0.4349329.
@pytest.mark.parametrize("rewards, std, expected", [
    ([1, 0, 0, 0], "unbiased", [1.999996, 0, 0, 0]),
    ([1, 0, 0, 0], "biased", [2.3093958, 0, 0, 0]),
    ([1, 0, 0, 0], "none", [1, 0, 0, 0]),
    ([0, 0, 1, 1], "unbiased", [0, 0, 0, 0]),  # a tie for the best: nobody is pivotal
    ([0, 0, 0, 0], "unbiased", [0, 0, 0, 0]),
    ([0.5, 1.0, 0.2, 0.0], "unbiased", [0, 1.1495999, 0, 0]),
    ([0.5, 1.0, 0.2, 0.0], "none", [0, 0.5, 0, 0]),
    ([-1, 1, -1, -1], "none", [0, 2, 0, 0]),  # +1/-1 rewards: r_max - r_second = 2
])
def test_passk_reference(rewards, std, expected):
    got = rl.passk_advantages(jnp.array(rewards, jnp.float32), 4, std=std)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_passk_per_group_and_dispatch():
    rewards = jnp.array([1, 0, 0, 0, 0, 1, 0, 1], jnp.float32)
    got = rl.advantages(rewards, 4, estimator="passk")
    np.testing.assert_allclose(got, [1.999996, 0, 0, 0, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(rl.advantages(rewards, 4, estimator="grpo"),
                                  rl.group_advantages(rewards, 4))
    with pytest.raises(ValueError, match=">= 2 samples"):
        rl.passk_advantages(jnp.array([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="estimator"):
        rl.advantages(rewards, 4, estimator="rloo")


def test_train_batch_uses_the_configured_estimator():
    n, s, t = 4, 2, 3
    rows = {"rewards": np.array([1, 0, 0, 0], np.float32), "mask": np.ones((n, t), bool),
            "truncated": np.zeros(n, bool), "prompt_tokens": np.ones((n, s), np.int32),
            "prompt_valid": np.ones((n, s), bool), "tokens": np.ones((n, t), np.int32),
            "logprobs": np.zeros((n, t), np.float32), "lengths": np.full(n, t)}
    grpo = train_batch(rl.StepConfig(), 4, rows)["adv_N"]
    passk = train_batch(rl.StepConfig(adv_estimator="passk"), 4, rows)["adv_N"]
    np.testing.assert_allclose(grpo, [1.499997, -0.499999, -0.499999, -0.499999], rtol=1e-6)
    np.testing.assert_allclose(passk, [1.999996, 0, 0, 0], rtol=1e-6)


# ------------------------------------------------------------------------ config and presets

def test_cispo_preset_is_dapo_with_the_cispo_loss():
    assert rl.get_preset("cispo") is rl.CISPO
    assert (rl.CISPO.loss, rl.CISPO.clip_low, rl.CISPO.clip_high) == ("cispo", 1.0, 0.28)
    assert rl.CISPO.agg == "token-mean" and rl.CISPO.beta == 0.0
    assert rl.CISPO.replace(loss="ppo", clip_low=0.2) == rl.DAPO


def test_config_keys_select_the_new_options():
    cfg = step_config(load_config(None, ["rl.algo=cispo"]))
    assert (cfg.loss, cfg.clip_low, cfg.clip_high) == ("cispo", 1.0, 0.28)
    cfg = step_config(load_config(None, [
        "rl.loss=kl_cov", "rl.kl_cov_ratio=0.002", "rl.kl_cov_coef=1.0",
        "rl.adv_estimator=passk"]))
    assert cfg.loss == "kl_cov" and cfg.adv_estimator == "passk"
    assert cfg.cov == rl.CovConfig(2e-4, 1.0, 5.0, 0.002, 1.0)
    cfg = step_config(load_config(None, ["rl.loss=clip_cov", "rl.clip_cov_lb=0.5"]))
    assert (cfg.clip_cov_ratio, cfg.clip_cov_lb, cfg.clip_cov_ub) == (2e-4, 0.5, 5.0)


@pytest.mark.parametrize("overrides, match", [
    (["rl.loss=reinforce"], "rl.loss"),
    (["rl.algo=gspo", "rl.loss=cispo"], "level"),
    (["rl.loss=kl_cov", "rl.dual_clip=3.0"], "dual_clip"),
    (["rl.loss=clip_cov", "rl.clip_cov_lb=6.0"], "clip_cov_lb"),
    (["rl.loss=kl_cov", "rl.kl_cov_ratio=0.0"], "kl_cov_ratio"),
    (["rl.adv_estimator=rloo"], "adv_estimator"),
    (["rl.clip_low=1.0"], "clip_low"),  # only CISPO's weight may drop the lower bound
])
def test_config_rejects_bad_combinations(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)
