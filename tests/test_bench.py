"""`reason-jax bench ...` end to end through the CLI with tiny sizes: each prints one JSON
object whose timings are positive and finite, and the dry-run memory estimate matches a
hand count of the sharded parameters."""

from __future__ import annotations

import json
import math

import pytest

from reason_jax import cli

# A model small enough that compiling and running it is a few seconds on 2 CPU cores.
TINY = ["--config.model.dim=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=2", "--config.model.head_dim=16",
        "--config.model.mlp_dim=64"]
# B divisible by the 8 forced host devices of conftest.py (mesh data=-1 -> data=8).
SMALL_ROLLOUT = ["--config.rollout.batch_size=8", "--config.rollout.group_size=2",
                 "--config.rollout.max_new_tokens=6"]


@pytest.fixture(autouse=True)
def _quick_calibration(monkeypatch):
    monkeypatch.setenv("REASON_JAX_BENCH_QUICK", "1")
    monkeypatch.setenv("REASON_JAX_BENCH_PROMPT_LEN", "8")


def _bench(capsys, *argv) -> dict:
    assert cli.main(["bench", *argv]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _tiny_param_count(vocab: int) -> int:
    D, F, L, Q, K, H = 32, 64, 1, 2, 2, 16
    return vocab * D + L * (2 * D * Q * H + 2 * D * K * H + 3 * D * F + 2 * D) + D


def test_sampler_bench(capsys):
    r = _bench(capsys, "sampler", "--no-hf", "--iters", "1", *TINY, *SMALL_ROLLOUT)
    assert r["bench"] == "sampler"
    assert (r["B"], r["G"], r["N"], r["T"], r["prompt_len"]) == (8, 2, 16, 6, 8)
    assert r["all_rows_full_length"] is True  # EOS disabled: every row ran all T steps
    assert r["generated_tokens"] == 16 * 6
    for k in ("tokens_per_s", "end_to_end_tokens_per_s", "decode_step_s", "prefill_s",
              "generate_s", "first_call_s", "roofline_fraction"):
        assert _ok(r[k]), (k, r[k])
    assert r["compile_s"] >= 0
    roof = r["roofline"]
    for k in ("params_bytes_per_device", "bytes_per_step", "bandwidth_bytes_per_s"):
        assert _ok(roof[k]), (k, roof[k])
    assert roof["bytes_per_step"] < roof["bytes_per_step_full_cache"]
    assert r["model"]["num_params"] == _tiny_param_count(r["model"]["vocab_size"])
    assert r["jax_version"] and r["device_kind"]
    assert "hf" not in r


def test_train_step_bench(capsys):
    r = _bench(capsys, "train-step", "--iters", "1", *TINY, *SMALL_ROLLOUT)
    assert r["bench"] == "train-step"
    assert (r["N"], r["S"], r["T"]) == (16, 16, 6)  # prompt 8 padded to bucket 16
    for k in ("step_s", "tokens_per_s", "response_tokens_per_s", "compile_s",
              "peak_memory_bytes", "flops_per_step_analytic", "matmul_flops_per_s", "mfu",
              "achieved_flops_per_s"):
        assert _ok(r[k]), (k, r[k])
    assert r["mfu"] < 10  # a fraction of a peak measured the same way (8 fake devices share cores)
    assert math.isfinite(r["last_metrics"]["loss"])


@pytest.mark.parametrize("mesh, emulate", [
    # fsdp only: every weight has an `embed` dim, so each is split exactly 2 ways.
    pytest.param((4, 2, 1), False, marks=pytest.mark.slow),
    # 4 devices != the 8 local ones: the slice is sized without having it, activations from
    # one device's rows compiled on one local device ...
    ((1, 2, 2), False),
    # ... or from the step compiled for the mesh in a child process with 4 emulated devices.
    pytest.param((1, 2, 2), True, marks=pytest.mark.slow),
])
def test_train_step_dry_run_param_bytes(capsys, monkeypatch, mesh, emulate):
    monkeypatch.setenv("REASON_JAX_BENCH_DRY_RUN_SUBPROCESS", "1" if emulate else "0")
    data, fsdp, tensor = mesh
    r = _bench(capsys, "train-step", "--dry-run", *TINY, *SMALL_ROLLOUT,
               f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}",
               f"--config.mesh.tensor={tensor}")
    assert r["dry_run"] is True
    assert r["mesh"] == {"dcn_data": 1, "data": data, "fsdp": fsdp, "tensor": tensor}
    fits = data * fsdp * tensor == 8
    assert r["mesh_fits_local_devices"] is fits
    if not fits:
        assert ("emulated CPU devices" in r["activations_method"]) is emulate
    pd = r["per_device"]
    for k in ("params_bytes", "optimizer_bytes", "rollout_params_bytes", "kv_cache_bytes",
              "activations_bytes", "rollout_phase_bytes", "train_phase_bytes"):
        assert _ok(pd[k]), (k, pd[k])
    V = r["model"]["vocab_size"]
    P = _tiny_param_count(V)
    assert r["model"]["num_params"] == P
    D, L = 32, 1
    norms = 2 * L * D + D  # sharded over fsdp only ("embed"); every other weight over both
    if tensor == 1:
        assert pd["params_bytes"] == P * 4 // fsdp
    else:
        assert V % tensor == 0
        assert pd["params_bytes"] == (P - norms) * 4 // (fsdp * tensor) + norms * 4 // fsdp
    # Adam: two moments sharded like the parameters, plus a few replicated scalars.
    assert 2 * pd["params_bytes"] <= pd["optimizer_bytes"] <= 2 * pd["params_bytes"] + 64
    # Rollout layout gathers fsdp: only `tensor` splits the weights.
    if tensor == 1:
        assert pd["rollout_params_bytes"] == P * 4
    # KV cache: K and V, [L, rows/(data*fsdp), slots, K/tensor, H] float32.
    rows_b, rows_n = 8 // (data * fsdp), 16 // (data * fsdp)
    per = 2 * L * (2 // tensor) * 16 * 4
    assert pd["kv_cache_bytes"] == per * (rows_b * r["S"] + rows_n * r["T"])


@pytest.mark.slow
def test_sampler_bench_hf_baseline(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = _bench(capsys, "sampler", "--iters", "1", *TINY, *SMALL_ROLLOUT)
    assert _ok(r["hf_tokens_per_s"]) and _ok(r["speedup_vs_hf"])
    assert r["hf"]["rows"] == 16 and r["hf"]["new_tokens_per_row"] == 6


@pytest.mark.slow
def test_rl_step_bench(capsys, tmp_path):
    r = _bench(capsys, "rl-step", "--iters", "1", "--workdir", str(tmp_path / "run"), *TINY,
               *SMALL_ROLLOUT, "--config.verifier.num_workers=1")
    assert r["bench"] == "rl-step"
    assert r["steps"] == 2 and r["steady_steps"] == 1
    for k in ("step_s", "rollout_s", "verify_s", "train_s", "rollout_tokens_per_s"):
        assert _ok(r[k]), (k, r[k])
    assert r["rollout_s"] + r["verify_s"] + r["train_s"] <= r["step_s"] * 1.001
    assert set(r["fractions"]) == {"rollout", "verify", "reshard", "train", "other"}
