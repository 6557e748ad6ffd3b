"""The rl section resolved into a StepConfig: rl.algo selects the preset, explicit keys win,
bf16 turns the rollout correction on; the optimizer schedule counts updates; user errors are
one line; the k3 estimate is bounded; the rollout correction matches REFERENCE.md."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reason_jax import rl
from reason_jax.config.loading import ConfigError, load_config, validate
from reason_jax.config.resolve import rl_optimizer, step_config


def test_algo_selects_preset_and_explicit_keys_win():
    grpo = step_config(load_config(None, ["rl.algo=grpo"]))
    assert (grpo.beta, grpo.clip_high, grpo.agg) == (0.04, 0.2, "seq-mean-token-mean")
    assert not grpo.dynamic_sampling and grpo.reward_incorrect == 0.0
    # The recipe's own explicit keys still win over the new preset...
    assert grpo.recompute_old_logp is False and grpo.max_gen_batches == 20
    # ...and so do command-line ones.
    tuned = step_config(load_config(None, ["rl.algo=grpo", "rl.clip_high=0.3", "rl.beta=0"]))
    assert (tuned.clip_high, tuned.beta, tuned.agg) == (0.3, 0.0, "seq-mean-token-mean")
    dapo = step_config(load_config(None, []))
    assert dapo == rl.DAPO.replace(recompute_old_logp=False, max_gen_batches=20,
                                   overlong_cache_len=4)
    # One spelling per variant, the old one still accepted.
    assert load_config(None, ["rl.algo=dr_grpo"]).rl.algo == "drgrpo"
    assert step_config(load_config("configs/countdown.py:drgrpo")).std == "none"
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo'"):
        load_config(None, ["rl.algo=ppo"])


def test_resolved_values_are_what_config_json_shows():
    cfg = load_config(None, ["rl.algo=gspo"])
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["rl"]["level"] == "sequence" and d["rl"]["clip_low"] == 3e-4
    assert all(v is not None for k, v in d["rl"].items() if k != "dual_clip")


def test_rollout_correction_defaults_by_dtype():
    assert step_config(load_config(None, [])).rollout_correction == "none"
    bf16 = ["model.dtype=bfloat16", "model.param_dtype=bfloat16"]
    # The countdown recipe turns recomputing pi_old off, so bf16 leaves TIS off there...
    assert step_config(load_config(None, bf16)).rollout_correction == "none"
    # ...and a bf16 recipe that recomputes pi_old gets TIS with C = 2.
    s = step_config(load_config(None, bf16 + ["rl.recompute_old_logp=True"]))
    assert (s.rollout_correction, s.rollout_correction_cap) == ("tis", 2.0)
    with pytest.raises(ConfigError, match="needs rl.recompute_old_logp=True"):
        load_config(None, ["rl.rollout_correction=tis"])


def test_sampling_temperature_reaches_the_learner():
    assert step_config(load_config(None, ["rollout.temperature=0.6"])).temperature == 0.6
    assert step_config(load_config(None, ["rollout.temperature=0"])).temperature == 1.0


def test_cosine_schedule_spans_every_update():
    """Defect: the schedule's clock counts optimizer updates (E x M per RL step); its length
    counted RL steps, so a cosine schedule ended after steps / (E*M) RL steps."""
    cfg = load_config(None, ["steps=10", "optimizer.schedule=cosine", "optimizer.warmup_steps=0",
                             "rl.ppo_epochs=2", "rl.num_minibatches=2"])
    opt = rl_optimizer(cfg)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    lrs = []
    for _ in range(40):  # 10 RL steps x 2 epochs x 2 minibatches
        _, state = opt.update({"w": jnp.ones(3)}, state, params)
        lrs.append(float(rl.current_learning_rate(state)))
    assert lrs[19] > 0.4 * cfg.optimizer.lr  # half way through the run, half the peak
    assert lrs[-2] > 0 and lrs[-1] < lrs[-2]


def test_user_errors_are_one_line(tmp_path, capsys):
    from reason_jax.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--workdir", str(tmp_path / "a"), "--config.data.task=jsonl",
              "--config.data.path=/nowhere.jsonl"])
    assert str(e.value).startswith("reason-jax train: config error: data.task='jsonl' needs a "
                                   "tokenizer")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--workdir", str(tmp_path / "empty")])
    msg = str(e.value)
    assert msg.startswith("reason-jax eval: FileNotFoundError: no checkpoint") and "\n" not in msg
    # --debug keeps the traceback for the same error.
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "--workdir", str(tmp_path / "empty2")])


def test_k3_output_is_clamped():
    """Defect: one token at +20 gave 4.9e8; verl bounds the estimate at 10."""
    kl = rl.kl_penalty(jnp.array([[-25.0, -1.0]]), jnp.array([[-5.0, -1.5]]), kind="k3")
    np.testing.assert_allclose(kl, [[10.0, 0.1065306597]], rtol=1e-6)


# ---- rollout/learner mismatch correction (REFERENCE.md vectors) -----------------------------
LP_OLD = jnp.array([[-1.0, -0.5, -2.0]])
LP_S = jnp.array([[-1.1, -0.5, -3.0]])
MASK = jnp.ones((1, 3))


def test_tis_weights():
    w, keep, m = rl.mismatch(LP_OLD, LP_S, MASK, rl.StepConfig(rollout_correction="tis"))
    np.testing.assert_allclose(w, [[1.1051709, 1.0, 2.0]], rtol=1e-6)
    assert bool(keep.all())
    np.testing.assert_allclose(m["mismatch/abs_logp_diff"], 1.1 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["mismatch/ratio_max"], np.exp(1.0), rtol=1e-6)
    np.testing.assert_allclose(m["mismatch/kl"], -1.1 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["mismatch/corrected_frac"], 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("cap, kept", [(2.0, True), (1.4, False)])
def test_mis_mask(cap, kept):
    cfg = rl.StepConfig(rollout_correction="mis", rollout_correction_cap=cap)
    w, keep, m = rl.mismatch(LP_OLD, LP_S, MASK, cfg)
    np.testing.assert_allclose(np.exp(1.1 / 3), 1.4429169, rtol=1e-6)
    assert bool(keep[0]) == kept and float(w.min()) == 1.0
    assert float(m["mismatch/corrected_frac"]) == (0.0 if kept else 1.0)


def test_tis_weights_multiply_the_token_loss():
    adv = jnp.array([1.0])
    w, _, _ = rl.mismatch(LP_OLD, LP_S, MASK, rl.StepConfig(rollout_correction="tis"))
    num, _ = rl.policy_loss_terms(LP_OLD, LP_OLD, adv, MASK, weight_NT=w)
    np.testing.assert_allclose(num, -(1.1051709 + 1.0 + 2.0), rtol=1e-6)
    # No gradient flows through the weight: d/dlogp = -w A at ratio 1.
    g = jax.grad(lambda lp: rl.policy_loss_terms(lp, LP_OLD, adv, MASK, weight_NT=w)[0])(LP_OLD)
    np.testing.assert_allclose(g, -w, rtol=1e-6)


def test_mis_drops_sequences_from_loss_and_normaliser():
    from test_rl_toy_model import apply_fn, init_params, make_batch

    batch = make_batch(8, seed=5, with_ref=False)
    far = batch["sampler_logp_NT"].at[0].add(-3.0)  # row 0's sampler log-probs are way off
    base = rl.StepConfig(rollout_correction="mis", rollout_correction_cap=2.0)
    opt = optax.sgd(1.0)
    step = rl.make_train_step(apply_fn, opt, base)
    _, m = step(rl.create_train_state(init_params(), opt), dict(batch, sampler_logp_NT=far))
    assert float(m["mismatch/corrected_frac"]) == pytest.approx(1 / 8)
    # Same update as dropping row 0 by hand (mask 0), with the correction off.
    by_hand = dict(batch, mask_NT=batch["mask_NT"].at[0].set(0.0))
    off = rl.make_train_step(apply_fn, opt, rl.StepConfig())
    s1, _ = step(rl.create_train_state(init_params(), opt), dict(batch, sampler_logp_NT=far))
    s2, _ = off(rl.create_train_state(init_params(), opt), by_hand)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_validate_rejects_bad_rl_values():
    for override, match in [("rl.clip_low=1.5", "clip_low"), ("rl.agg=mean", "agg"),
                            ("rl.filter_metric=score", "filter_metric"),
                            ("data.countdown.numbers=1", "data.countdown.numbers"),
                            ("data.countdown.max_target=5000", "three digits")]:
        with pytest.raises(ConfigError, match=match):
            validate(load_config(None, [override]))


def test_answer_format_option():
    from reason_jax.config.resolve import verifier_options

    assert verifier_options(load_config(None, [])) == {}
    cfg = load_config("configs/qwen2p5_math_dapo.py")
    assert verifier_options(cfg) == {"answer_format": "answer_line"}
    two = load_config(None, ["verifier.answer_format=boxed,answer_line"])
    assert verifier_options(two) == {"answer_format": ("boxed", "answer_line")}
    with pytest.raises(ConfigError, match="answer_format"):
        validate(load_config(None, ["verifier.answer_format=latex"]))
