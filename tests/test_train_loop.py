"""End-to-end RL loop: metrics, exact resume, SIGTERM, damaged checkpoints, mesh change,
no recompilation, bad configs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from reason_jax.config.loading import ConfigError, load_config, validate
from reason_jax.run.loop import train
from reason_jax.observe.metrics import read_metrics

SMALL = [
    "steps=4", "sft.steps=3", "sft.batch_size=16", "rollout.batch_size=8",
    "rollout.group_size=4", "rollout.max_new_tokens=12", "rl.dynamic_sampling=False",
    "checkpoint.every=2", "log.progress=False", "model.dim=32", "model.mlp_dim=64",
    "model.num_layers=1", "model.head_dim=16", "verifier.num_workers=1",
    "checkpoint.async_save=False", "eval.every=0",
]
# Values that depend on wall time, not on the computation.
_TIMING = ("time/", "throughput/", "compiles")


def _cfg(*extra):
    return load_config(None, SMALL + list(extra))


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(_TIMING)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    train(_cfg(), wd)
    return wd


def test_writes_metrics_config_plots_checkpoints(full_run):
    rows = read_metrics(os.path.join(full_run, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("step", "reward/mean", "accuracy", "response_length/mean", "loss",
                "clip_frac/low", "clip_frac/high", "entropy", "grad_norm",
                "throughput/rollout_tokens_per_s", "time/step_s", "time/rollout_s",
                "time/verify_s", "time/train_s", "verifier/ok", "verifier/format_error"):
        assert key in rows[0], key
    assert rows[0]["response_length/mean"] > 0
    for name in ("config.json", "model_config.json", "curves.png"):
        assert os.path.exists(os.path.join(full_run, name)), name
    with open(os.path.join(full_run, "config.json")) as f:
        assert json.load(f)["rollout"]["group_size"] == 4
    steps = sorted(int(s) for s in os.listdir(os.path.join(full_run, "checkpoints"))
                   if s.isdigit())
    assert steps[-1] == 4 and steps[0] == 0  # step 0 (the SFT result) is always kept


def test_no_recompilation_after_first_steps(full_run):
    rows = read_metrics(os.path.join(full_run, "metrics.jsonl"))
    counts = [r["compiles"] for r in rows]
    # Step 1 compiles the sampler and the train step; later steps reuse them.
    assert counts[1] == counts[2] == counts[3], counts


def test_exact_resume_matches_uninterrupted_run(full_run, tmp_path):
    wd = str(tmp_path / "resumed")
    train(_cfg(), wd, max_steps=2)
    assert len(read_metrics(os.path.join(wd, "metrics.jsonl"))) == 2
    train(_cfg(), wd)  # the same command again: resumes at step 2
    resumed = read_metrics(os.path.join(wd, "metrics.jsonl"))
    full = read_metrics(os.path.join(full_run, "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full[2:], resumed[2:]):
        ca, cb = _comparable(a), _comparable(b)
        assert ca.keys() == cb.keys()
        for k in ca:
            assert ca[k] == pytest.approx(cb[k], rel=1e-6, abs=1e-7), k


def test_damaged_latest_checkpoint_falls_back_to_previous(full_run, tmp_path, caplog):
    wd = str(tmp_path / "damaged")
    shutil.copytree(full_run, wd)
    latest = os.path.join(wd, "checkpoints", "4", "state")
    # A process killed mid-write: the array data of the newest checkpoint is gone.
    for root, _, files in os.walk(latest):
        for name in files:
            if name != "_METADATA":
                os.remove(os.path.join(root, name))
    from reason_jax.run.loop import Run

    run = Run(_cfg(), wd)
    abstract = run.abstract_state()
    with caplog.at_level("WARNING"):
        step, _, meta = run.ckpt.restore(abstract)
    assert step == 2 and meta["step"] == 2
    assert any("cannot be restored" in r.message for r in caplog.records)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    wd = str(tmp_path / "mesh")
    train(_cfg("steps=2", "mesh.data=8"), wd)
    # Same workdir, new mesh shape: parameters and optimizer state are resharded on restore.
    summary = train(_cfg("steps=3", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), wd)
    assert summary["step"] == 3
    rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits_zero(tmp_path):
    wd = str(tmp_path / "sigterm")
    cmd = [sys.executable, "-m", "reason_jax", "train", "--workdir", wd] + [
        f"--config.{o}" for o in SMALL] + ["--config.steps=200", "--config.checkpoint.every=1000"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(metrics) and len(read_metrics(metrics)) >= 2:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-2000:]
    done = max(r["step"] for r in read_metrics(metrics))
    steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())
    assert 2 <= done < 200
    assert steps[-1] == done  # the step finished when the signal came was saved


def test_misspelt_key_names_nearest():
    with pytest.raises(ConfigError, match="did you mean 'rl.clip_high'"):
        load_config(None, ["rl.clip_hihg=0.3"])


@pytest.mark.parametrize("override, message", [
    ("rl.clip_low=1.5", "clip_low"),
    ("rollout.batch_size=6", "not divisible by the mesh's data size"),
    ("rl.overlong_cache_len=20", "overlong_cache_len"),
    ("rollout.group_size=1", "group of one"),
    ("rl.agg=token-sum", "rl.agg"),
    ("rollout.temperature=-1", "temperature"),
])
def test_impossible_settings_rejected(override, message):
    # Some are caught as the config loads (the rl section), the rest by validate.
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, [override, "rl.overlong_shaping=True"]), 8)


def test_wrong_value_type_rejected():
    with pytest.raises(ConfigError, match="cannot parse .many. as int"):
        load_config(None, ["rollout.group_size=many"])


def test_cli_reports_config_error(capsys):
    from reason_jax.cli import main

    with pytest.raises(SystemExit, match="did you mean"):
        main(["train", "--workdir", "/tmp/unused", "--config.rl.clip_hihg=0.3"])


def test_trained_workdir_exports_to_transformers(full_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp
    import numpy as np

    from reason_jax.cli import main
    from reason_jax.models import from_hf
    from reason_jax.run.loop import Run

    out = str(tmp_path / "hf")
    main(["export-hf", full_run, out])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = np.random.default_rng(0).integers(0, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    # The exported weights are the last checkpoint's policy.
    run = Run(_cfg(), full_run)
    abstract = run.abstract_state()
    _, state, _ = run.ckpt.restore(abstract)
    ours = np.asarray(run.policy.model(state.params)(jnp.asarray(tokens)))
    assert np.abs(ref - ours).max() < 1e-4
    assert np.abs(np.asarray(from_hf(out)(jnp.asarray(tokens))) - ours).max() < 1e-5


def test_kl_reference_is_the_policy_rl_starts_from(tmp_path):
    wd = str(tmp_path / "kl")
    train(_cfg("steps=1", "rl.beta=0.04"), wd)
    train(_cfg("steps=2", "rl.beta=0.04"), wd)  # resumed: the reference comes from step 0
    rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
    # Step 1 updates from the reference itself, so KL is 0; later steps have moved away.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert 0 < rows[1]["kl"] < 1e-2


def test_held_out_eval_while_training_and_eval_step_file(tmp_path):
    wd = str(tmp_path / "ev")
    ev = ["eval.every=2", "eval.num_problems=16", "eval.k=2", "eval.batch_size=8"]
    train(_cfg("steps=3", *ev), wd)
    rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
    with_eval = [r["step"] for r in rows if "eval/pass@1" in r]
    assert with_eval == [0, 2, 3]  # the SFT start, every 2 steps, and the last step
    for r in rows:
        if "eval/pass@1" in r:
            assert 0.0 <= r["eval/pass@1"] <= r["eval/pass@k"] <= 1.0 and r["eval/k"] == 2
    assert os.path.exists(os.path.join(wd, "curves.png"))

    from reason_jax.eval.run import evaluate

    latest = evaluate(_cfg(*ev), wd)
    assert latest["step"] == 3 and os.path.exists(os.path.join(wd, "eval.json"))
    before = open(os.path.join(wd, "eval.json")).read()
    at0 = evaluate(_cfg(*ev), wd, step=0)
    assert at0["step"] == 0
    with open(os.path.join(wd, "eval-0.json")) as f:
        assert json.load(f)["step"] == 0
    assert open(os.path.join(wd, "eval.json")).read() == before  # not overwritten
    # The in-loop number at step 0 is the same measurement as `eval --step 0` (greedy aside).
    assert rows[0]["eval/pass@1"] == pytest.approx(at0["pass@1"])


def test_time_budget_counts_the_whole_run_and_ends_with_an_eval(tmp_path):
    """`time_budget_s` includes SFT and set-up (a run of 10 minutes means 10 minutes): a
    budget the SFT alone exceeds still trains one RL step, checkpoints it, and measures the
    held-out eval where the policy stopped."""
    wd = str(tmp_path / "tb")
    ev = ["eval.every=2", "eval.num_problems=16", "eval.k=2", "eval.batch_size=8"]
    train(_cfg("steps=6", "time_budget_s=0.001", *ev), wd)
    rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1]
    assert "eval/pass@1" in rows[1]
    assert os.path.isdir(os.path.join(wd, "checkpoints", "1"))


def test_dynamic_sampling_without_informative_groups_skips_then_fails(tmp_path):
    """An untrained policy solves nothing: every group has zero spread. Steps are skipped
    (counted, warned), and only max_skipped_steps in a row stop the run, with a message that
    says what to change."""
    from reason_jax.rl import DynamicSamplingError

    ds = ["sft.steps=0", "rl.dynamic_sampling=True", "rl.max_gen_batches=2"]
    wd = str(tmp_path / "skip")
    train(_cfg("steps=2", *ds, "rl.max_skipped_steps=5"), wd)
    rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
    assert [r["dynamic_sampling/skipped_step"] for r in rows] == [1, 1]
    assert "loss" not in rows[0] and rows[0]["dynamic_sampling/gen_batches"] == 2
    with pytest.raises(DynamicSamplingError, match="2 steps in a row.*max_gen_batches"):
        train(_cfg("steps=4", *ds, "rl.max_skipped_steps=2"), str(tmp_path / "fail"))


def test_continuous_batching_run_matches_lock_step(full_run, tmp_path):
    """R = 8 decode slots for 32 samples: the same samples, so the same run."""
    wd = str(tmp_path / "slots")
    train(_cfg("rollout.max_rows=8"), wd)
    got = read_metrics(os.path.join(wd, "metrics.jsonl"))
    want = read_metrics(os.path.join(full_run, "metrics.jsonl"))
    assert len(got) == len(want) == 4
    for a, b in zip(want, got):
        assert b["rollout/slot_utilisation"] >= a["rollout/slot_utilisation"]
        ca, cb = _comparable(a), _comparable(b)
        ca.pop("rollout/slot_utilisation")
        cb.pop("rollout/slot_utilisation")
        assert ca.keys() == cb.keys()
        for k in ca:
            assert cb[k] == pytest.approx(ca[k], rel=1e-4, abs=1e-6), k


def test_sampling_temperature_gives_ratio_one(tmp_path):
    """tau = 0.6 with top-k and top-p: the sampler's log-probs are of logits / tau, as the
    learner's are, so with pi_old recomputed the first update's ratio is exactly 1 and the
    sampler agrees with the learner to float32 rounding."""
    wd = str(tmp_path / "tau")
    train(_cfg("steps=1", "rollout.temperature=0.6", "rollout.top_k=8", "rollout.top_p=0.9",
               "rl.recompute_old_logp=True"), wd)
    row = read_metrics(os.path.join(wd, "metrics.jsonl"))[0]
    assert row["ratio/mean"] == 1.0 and row["ratio/max"] == 1.0
    assert row["mismatch/abs_logp_diff"] < 1e-5 and row["mismatch/ratio_max"] < 1.0001
