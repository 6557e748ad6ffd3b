"""Dynamic-sampling accumulator, presets, optimizer schedule and completion log-probs."""

import dataclasses

import jax
import numpy as np
import pytest

from reason_jax import rl
from test_rl_toy_model import S, T, apply_fn, init_params, make_batch


def _gen_batch(acc_rows, start):
    n = len(acc_rows)
    return {"id": np.arange(start, start + n), "text": [f"c{start + i}" for i in range(n)]}


def test_group_accumulator_collects_until_full():
    acc = rl.GroupAccumulator(target_groups=3, group_size=2, max_gen_batches=5)
    # batch 1: groups [1,1] dropped, [0,1] kept; batch 2: [0,0] dropped, [1,0], [0,1] kept
    assert not acc.add(_gen_batch([1, 1, 0, 1], 0), np.array([1, 1, 0, 1]))
    assert acc.add(_gen_batch([0, 0, 1, 0, 0, 1], 10), np.array([0, 0, 1, 0, 0, 1]))
    batch, loss_rows, stats = acc.take()
    np.testing.assert_array_equal(batch["id"], [2, 3, 12, 13, 14, 15])
    assert batch["text"] == ["c2", "c3", "c12", "c13", "c14", "c15"] and loss_rows.all()
    assert stats == {"dynamic_sampling/groups_dropped": 2, "dynamic_sampling/groups_surplus": 0,
                     "dynamic_sampling/groups_missing": 0, "dynamic_sampling/gen_batches": 2}


def test_group_accumulator_truncates_surplus():
    acc = rl.GroupAccumulator(target_groups=1, group_size=2, max_gen_batches=2)
    acc.add(_gen_batch([0, 1, 1, 0], 0), np.array([0, 1, 1, 0]))
    batch, loss_rows, stats = acc.take()
    np.testing.assert_array_equal(batch["id"], [0, 1])
    assert loss_rows.all() and stats["dynamic_sampling/groups_surplus"] == 1


def test_group_accumulator_exhausted_pads_with_masked_groups():
    """Out of generation batches: train on the groups found, padded to the static shape with
    dropped groups that leave the loss (loss_rows False)."""
    acc = rl.GroupAccumulator(target_groups=3, group_size=2, max_gen_batches=2)
    acc.add(_gen_batch([1, 1, 0, 1], 0), np.array([1, 1, 0, 1]))  # keeps group [2, 3]
    assert not acc.exhausted
    acc.add(_gen_batch([0, 0, 1, 1], 10), np.array([0, 0, 1, 1]))  # nothing kept
    assert acc.exhausted and not acc.full
    batch, loss_rows, stats = acc.take()
    np.testing.assert_array_equal(batch["id"], [2, 3, 10, 11, 12, 13])
    np.testing.assert_array_equal(loss_rows, [True, True, False, False, False, False])
    assert stats["dynamic_sampling/groups_missing"] == 2

    acc = rl.GroupAccumulator(target_groups=3, group_size=2, max_gen_batches=1)
    acc.add(_gen_batch([0, 0], 0), np.array([0, 0]))  # one dropped group fills three slots
    batch, loss_rows, _ = acc.take()
    np.testing.assert_array_equal(batch["id"], [0, 1, 0, 1, 0, 1])
    assert not loss_rows.any()


def test_presets():
    assert rl.GRPO.clip_low == rl.GRPO.clip_high == 0.2
    assert rl.GRPO.beta == 0.04 and rl.GRPO.kl_kind == "k3"
    assert rl.GRPO.agg == "seq-mean-token-mean" and rl.GRPO.std == "unbiased"
    assert (rl.DAPO.clip_low, rl.DAPO.clip_high, rl.DAPO.beta) == (0.2, 0.28, 0.0)
    assert rl.DAPO.agg == "token-mean" and rl.DAPO.reward_incorrect == -1.0
    assert rl.DAPO.overlong_shaping and rl.DAPO.dynamic_sampling
    assert rl.DAPO.overlong_window(20480) == 4096 and rl.DAPO.overlong_window(16) == 3
    assert rl.DR_GRPO.std == "none" and rl.DR_GRPO.agg == "seq-mean-token-sum-norm"
    assert rl.GSPO.level == "sequence" and (rl.GSPO.clip_low, rl.GSPO.clip_high) == (3e-4, 4e-4)
    for name, preset in rl.PRESETS.items():
        assert isinstance(preset, rl.StepConfig), name
    assert rl.get_preset("dr_grpo") is rl.get_preset("drgrpo") is rl.DR_GRPO
    with pytest.raises(dataclasses.FrozenInstanceError):
        rl.DAPO.beta = 1.0
    assert rl.DAPO.replace(beta=1.0).beta == 1.0 and rl.DAPO.beta == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(clip_low=1.0), "clip_low"), (dict(agg="mean"), "agg"), (dict(micro_batches=0),
    "micro_batches"), (dict(rollout_correction="tis", recompute_old_logp=False),
    "recompute_old_logp"), (dict(rollout_correction="mis", rollout_correction_cap=0.5),
    "rollout_correction_cap"), (dict(filter_metric="score"), "filter_metric")])
def test_step_config_validates(bad, match):
    with pytest.raises(ValueError, match=match):
        rl.StepConfig(**bad)


def test_schedule():
    sched = rl.make_schedule(1.0, warmup_steps=2, total_steps=10, schedule="cosine")
    np.testing.assert_allclose([sched(i) for i in (0, 1, 2, 6, 10, 20)],
                               [0.5, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    const = rl.make_schedule(1.0, warmup_steps=4, total_steps=10, schedule="constant")
    np.testing.assert_allclose([const(i) for i in (0, 3, 9)], [0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="cosine, constant"):
        rl.make_schedule(1.0, 0, 1, schedule="linear")


def test_completion_logprobs_alignment_and_chunked_fn():
    batch = make_batch(8, seed=5)
    params = init_params()
    # Jitted: eager dispatch of these small ops costs more than compiling them.
    logprobs = jax.jit(
        lambda p, b, temp: rl.completion_logprobs(apply_fn, p, b, T, temperature=temp),
        static_argnums=2,
    )
    logp, ent = logprobs(params, batch, 1.0)
    logits = jax.jit(apply_fn)(params, batch["tokens_NX"], batch["positions_NX"],
                               batch["valid_NX"])
    i, t = 3, 2  # completion token t is predicted at column S - 1 + t
    row = np.asarray(logits[i, S - 1 + t], np.float64)
    token = int(batch["tokens_NX"][i, S + t])

    def log_softmax(z):
        return z - np.log(np.sum(np.exp(z - z.max()))) - z.max()

    np.testing.assert_allclose(logp[i, t], log_softmax(row)[token], rtol=1e-5)
    p = np.exp(log_softmax(row))
    np.testing.assert_allclose(ent[i, t], -np.sum(p * np.log(p)), rtol=1e-5)
    chunked = rl.make_logprob_fn(apply_fn, T, chunks=4)(params, rl.RolloutBatch(**batch))
    np.testing.assert_allclose(chunked, logp, rtol=1e-6, atol=1e-6)
    hot, _ = logprobs(params, batch, 0.5)
    np.testing.assert_allclose(hot[i, t], log_softmax(row / 0.5)[token], rtol=1e-5)
