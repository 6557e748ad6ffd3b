"""Continuous batching in the fused sampler: `generate(..., max_rows=R)` decodes the N = B*G
samples in R slots, a finished slot taking the next waiting sample.

  * Scheduling does not change results: R = N (lock-step), N/4 and 3 give identical tokens per
    sample and log-probs within 1e-5 (float32), when sampling with EOS ids and when greedy;
    the log-probs also equal a full forward pass's.
  * Forced per-sample lengths (`max_lengths`, the benchmark's long tail) cut each sample at its
    limit, marked truncated, tokens a prefix of the unlimited run.
  * The loop does no wasted work: R = N runs max(length) - 1 decode steps (the first token
    comes from prefill, the last is never fed back); R = 1 runs sum(length - 1); with R = 5
    the tail (queue empty, few samples left) runs in fewer slots.
  * T = 256: the slot cache in two chunks, the second read only once reached: lock-step and
    8 slots agree, log-probs equal a full forward pass's.
  * One compiled program per (bucket, R): new prompts, seeds, temperatures and length limits
    reuse it (XLA compilations counted).
  * Sharded over (data, tensor) = (4, 2) and (data, fsdp, tensor) = (2, 2, 2) meshes with
    R < N, and over 2 JAX processes x 4 devices (launch/local.py): the same tokens as one
    device.
  * `kv_cache_gb` resolves R from the per-device K/V budget (checked by hand), and the
    compiled program's buffers shrink with R by the decode cache's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import random_params

from reason_jax.models.config import tiny_llama
from reason_jax.run.compile_counter import compile_count
from reason_jax.run.policy import Policy
from reason_jax.sampling import generate, memory
from reason_jax.sampling import sampler as sampler_mod
from reason_jax.sharding import make_mesh
from reason_jax.sharding.host_arrays import to_global

VOCAB = 24
PAD = VOCAB - 1
T = 10
G = 4
CFG = tiny_llama(VOCAB, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 mlp_dim=64, tie_embeddings=False)
LENGTHS = np.array([5, 16, 1, 11], np.int32)
N = len(LENGTHS) * G
LOGP_TOL = 1e-5


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, 0, scale=0.2)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    toks = rng.integers(0, PAD, size=(len(LENGTHS), 16)).astype(np.int32)
    toks[np.arange(16)[None, :] >= LENGTHS[:, None]] = PAD
    return toks


def _gen(params, prompts, lengths=LENGTHS, **kw):
    kw.setdefault("group_size", G)
    kw.setdefault("max_new_tokens", T)
    kw.setdefault("pad_id", PAD)
    return jax.tree.map(np.asarray, generate(params, prompts, lengths, **kw))


@pytest.fixture(scope="module")
def eos_id(params, prompts):
    """An EOS id that ends some samples early and not others."""
    ref = _gen(params, prompts, temperature=1.0, seed=5)
    counts = np.bincount(ref.tokens[:, 1:T - 1].ravel(), minlength=VOCAB)
    for tok in np.argsort(-counts):
        hit = (ref.tokens == tok).any(1)
        if 0 < hit.sum() < N:
            return int(tok)
    raise AssertionError("no token ends only some samples")


def _assert_same(a, b, what):
    np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=what)
    np.testing.assert_array_equal(a.lengths, b.lengths, err_msg=what)
    np.testing.assert_array_equal(a.truncated, b.truncated, err_msg=what)
    np.testing.assert_array_equal(a.mask, b.mask, err_msg=what)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=LOGP_TOL, rtol=0, err_msg=what)


def _full_logp(params, out, tau):
    graphdef, state = params
    valid = np.concatenate([out.prompt_valid, out.mask], 1)
    tokens = np.concatenate([out.prompt_tokens, out.tokens], 1)
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    logits = jax.jit(lambda st, t, p, v: nnx.merge(graphdef, st)(t, p, v))(state, tokens, pos,
                                                                          valid)
    S, T_out = out.prompt_tokens.shape[1], out.tokens.shape[1]
    logp = jax.nn.log_softmax(logits[:, S - 1:S - 1 + T_out] / tau, -1)
    return np.take_along_axis(np.asarray(logp), out.tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("temperature", [1.3, 0.0], ids=["sampled", "greedy"])
def test_results_independent_of_slots(params, prompts, eos_id, temperature):
    kw = dict(temperature=temperature, seed=9, eos_ids=[eos_id])
    lock = _gen(params, prompts, **kw)
    assert lock.num_slots == N
    stopped = ~lock.truncated
    assert stopped.any() and (~stopped).any(), "EOS should end some samples, not all"
    if temperature:
        assert len({tuple(r) for r in lock.tokens}) > N // 2  # really sampled
    for R in (N // 4, 3):
        out = _gen(params, prompts, max_rows=R, **kw)
        assert out.num_slots == R
        _assert_same(out, lock, f"max_rows={R}")
    want = _full_logp(params, lock, temperature or 1.0)
    np.testing.assert_allclose(lock.logprobs, np.where(lock.mask, want, 0), atol=LOGP_TOL,
                               rtol=0)


def test_forced_lengths_and_step_counts(params, prompts):
    """Per-sample limits end samples early (truncated); the loop runs exactly the decode steps
    the lengths need: max - 1 in lock-step, sum(length - 1) with one slot."""
    full = _gen(params, prompts, temperature=1.0, seed=3)
    assert int(full.decode_steps) == T - 1  # no wasted last decode
    rng = np.random.default_rng(1)
    limits = rng.integers(2, T + 1, size=N).astype(np.int32)
    limits[5] = T
    for R, want_steps in ((None, T - 1), (5, None), (1, int((limits - 1).sum()))):
        out = _gen(params, prompts, temperature=1.0, seed=3, max_rows=R, max_lengths=limits)
        np.testing.assert_array_equal(out.lengths, limits)
        assert out.truncated.all()
        for n in range(N):
            np.testing.assert_array_equal(out.tokens[n, :limits[n]], full.tokens[n, :limits[n]])
            assert (out.tokens[n, limits[n]:] == PAD).all()
            assert (out.logprobs[n, limits[n]:] == 0).all()
        np.testing.assert_allclose(out.logprobs, np.where(out.mask, full.logprobs, 0),
                                   atol=LOGP_TOL, rtol=0)
        steps, slot_steps = int(out.decode_steps), int(out.slot_steps)
        work = int((limits - 1).sum())  # tokens drawn by decode steps
        if want_steps is not None:
            assert steps == want_steps, (R, steps, want_steps)
            assert slot_steps == steps * out.num_slots
        else:  # all 5 slots busy until the queue empties; then the tail runs in 2, then 1
            assert work / 5 <= steps <= work / 5 + T, (steps, work)
            assert work <= slot_steps < 5 * steps, (slot_steps, steps)
    with pytest.raises(ValueError, match="one entry per sample"):
        _gen(params, prompts, max_lengths=limits[:3])


def test_cache_chunks_read_only_when_reached(params, prompts):
    """T = 256: the slot cache is 2 chunks, the second read only once a sample reaches column
    128. With samples ending at various limits, lock-step and 8 slots sample the same tokens,
    and the log-probs equal a full forward pass's."""
    Tl = 256
    assert sampler_mod.SamplingParams(group_size=G, max_new_tokens=Tl,
                                      num_slots=N).cache_chunks() == 2
    limits = np.random.default_rng(5).integers(1, Tl + 1, size=N).astype(np.int32)
    limits[3] = Tl
    kw = dict(temperature=0.9, seed=2, max_new_tokens=Tl, max_lengths=limits)
    lock = _gen(params, prompts, **kw)
    assert int(lock.decode_steps) == Tl - 1
    cont = _gen(params, prompts, max_rows=N // 2, **kw)
    _assert_same(lock, cont, "lock-step vs max_rows=N/2, 2 cache chunks")
    want = _full_logp(params, lock, 0.9)
    np.testing.assert_allclose(lock.logprobs, np.where(lock.mask, want, 0), atol=1e-4, rtol=0)


def test_one_program_per_bucket_and_slot_count(params, prompts):
    rng = np.random.default_rng(7)
    before_cache = sampler_mod._sample._cache_size()
    _gen(params, prompts, max_rows=3, temperature=1.0, seed=0,
         max_lengths=np.full(N, T))  # may compile
    first = compile_count()
    cached = sampler_mod._sample._cache_size()
    assert cached <= before_cache + 1
    for i in range(3):
        lengths = rng.integers(1, 17, size=4).astype(np.int32)
        p = rng.integers(0, PAD, size=(4, int(lengths.max()))).astype(np.int32)
        _gen(params, p, lengths, max_rows=3, temperature=[0.7, 0.0, 1.5][i], seed=i,
             max_lengths=rng.integers(1, T + 1, size=N))
    assert sampler_mod._sample._cache_size() == cached
    assert compile_count() == first, "continuous batching recompiled within a bucket"


@pytest.mark.parametrize("sizes", [{"data": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["data4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_continuous_matches_single_device(params, prompts, eos_id, sizes):
    mesh = make_mesh(sizes)
    policy = Policy(CFG, mesh)
    rollout, _ = policy.to_rollout(jax.device_put(params[1], policy.train_shardings))
    g_tokens, g_lengths = to_global((prompts, LENGTHS), mesh)
    kw = dict(temperature=1.3, seed=9, eos_ids=[eos_id])
    ref = _gen(params, prompts, **kw)
    shards = 4
    for R in (shards, 3 * shards):
        out = _gen((policy.graphdef, rollout), g_tokens, g_lengths, max_rows=R, **kw)
        assert out.num_slots == R
        _assert_same(out, ref, f"{sizes} max_rows={R}")
    # R is rounded up so every shard has the same number of slots.
    assert _gen((policy.graphdef, rollout), g_tokens, g_lengths, max_rows=5,
                **kw).num_slots == 8


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from reason_jax.sharding import distributed
    assert distributed.initialize()
    import jax
    sys.path.insert(0, {tests!r})
    from helpers import random_params
    from reason_jax.models.config import tiny_llama
    from reason_jax.sampling import generate
    from reason_jax.sharding import make_mesh
    from reason_jax.sharding.host_arrays import to_global, to_local
    cfg = tiny_llama(**{cfg!r})
    graphdef, params = random_params(cfg, 0, scale=0.2)
    params = jax.tree.map(np.asarray, params)  # host values: replicated in every process
    prompts, lengths = np.asarray({prompts!r}, np.int32), np.asarray({lengths!r}, np.int32)
    pid, rows = jax.process_index(), len(lengths) // 2
    mine = slice(pid * rows, (pid + 1) * rows)
    mesh = make_mesh({{"data": 8}})
    g_tokens, g_lengths = to_global((prompts[mine], lengths[mine]), mesh)
    out = generate((graphdef, params), g_tokens, g_lengths, **{kw!r})
    host = to_local({{"tokens": out.tokens, "lengths": out.lengths}})
    print("RESULT " + json.dumps({{"pid": pid, "slots": out.num_slots,
                                   "tokens": host["tokens"].tolist(),
                                   "lengths": host["lengths"].tolist()}}))
""")


def test_two_processes_continuous_match_one_process(params, eos_id, tmp_path):
    """2 JAX processes x 4 CPU devices, prompts split by process, R = 8 slots (one per
    device): each process's rows equal the single-process run's."""
    root = Path(__file__).resolve().parents[1]
    B2 = 8
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 17, size=B2).astype(np.int32)
    prompts = rng.integers(0, PAD, size=(B2, 16)).astype(np.int32)
    kw = dict(group_size=2, max_new_tokens=T, temperature=1.3, seed=9, eos_ids=[eos_id],
              pad_id=PAD, max_rows=8)
    ref = _gen(params, prompts, lengths, **kw)
    assert (~ref.truncated).any()
    cfg = dict(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
               head_dim=8, mlp_dim=64, tie_embeddings=False)
    script = TWO_PROCESS_SCRIPT.format(tests=str(root / "tests"), cfg=cfg,
                                       prompts=prompts.tolist(), lengths=lengths.tolist(),
                                       kw=kw)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(root / "launch" / "local.py"), "--log-dir",
                           str(tmp_path / "logs"), "--num-processes", "2",
                           "--devices-per-process", "4", "--", "python", "-c", script],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines()
               if "RESULT " in line]
    assert sorted(r["pid"] for r in results) == [0, 1]
    half = len(ref.lengths) // 2
    for r in results:
        mine = slice(r["pid"] * half, (r["pid"] + 1) * half)
        assert r["slots"] == 8
        np.testing.assert_array_equal(np.asarray(r["tokens"]), ref.tokens[mine])
        np.testing.assert_array_equal(np.asarray(r["lengths"]), ref.lengths[mine])


def test_kv_budget_resolves_slots(params, prompts):
    # Per token, all layers, K and V, float32: 2 * L * K * H * 4 bytes.
    per = 2 * CFG.num_layers * CFG.num_kv_heads * CFG.head_dim * 4
    S, B = 16, len(LENGTHS)
    prefix, slot = per * B * S, per * T
    budget_gb = (prefix + 5 * slot + slot // 2) / 2 ** 30
    R = memory.slots_for_kv_budget(CFG, budget_gb, batch_size=B, group_size=G, prompt_len=S,
                                   max_new_tokens=T)
    assert R == 5
    # 4 data shards: a quarter of the prompts per device, slots a multiple of 4.
    budget4 = (prefix // 4 + 2 * slot) / 2 ** 30
    assert memory.slots_for_kv_budget(CFG, budget4, batch_size=B, group_size=G, prompt_len=S,
                                      max_new_tokens=T, data_shards=4) == 8
    # KV heads split over tensor halve the per-token bytes.
    assert memory.slots_for_kv_budget(CFG, (prefix + 3 * slot) / 2 / 2 ** 30, batch_size=B,
                                      group_size=G, prompt_len=S, max_new_tokens=T,
                                      tensor=2) == 3
    assert memory.slots_for_kv_budget(CFG, 1.0, batch_size=B, group_size=G, prompt_len=S,
                                      max_new_tokens=T) == N  # never more than N
    with pytest.raises(ValueError, match="holds no decode slot"):
        memory.slots_for_kv_budget(CFG, prefix / 2 ** 30, batch_size=B, group_size=G,
                                   prompt_len=S, max_new_tokens=T)
    out = _gen(params, prompts, temperature=0.0, kv_cache_gb=budget_gb)
    assert out.num_slots == 5
    assert _gen(params, prompts, temperature=0.0, kv_cache_gb=budget_gb,
                max_rows=3).num_slots == 3  # the smaller wins
    bytes_ = memory.kv_cache_bytes(CFG, batch_size=B, prompt_len=S, num_slots=5,
                                   max_new_tokens=T)
    assert bytes_ == {"prefix_bytes": prefix, "ring_bytes": 5 * slot,
                      "total_bytes": prefix + 5 * slot}


def test_compiled_buffers_shrink_with_slots(params):
    """XLA's own buffer assignment: the program with R = N/4 slots needs the decode cache of
    3N/4 slots less than the lock-step one, up to the first tail phase's cache (R/2 slots,
    alive while the live samples move into it)."""
    graphdef, state = params
    Tl = 64
    tokens, lengths = jnp.zeros((4, 16), jnp.int32), jnp.full((4,), 16, jnp.int32)

    def temp_bytes(R):
        sp = sampler_mod.SamplingParams(group_size=G, max_new_tokens=Tl, num_slots=R)
        compiled = sampler_mod._sample.lower(sp, graphdef, state, tokens, lengths, None,
                                             jax.random.key(0), jnp.float32(1.0),
                                             jnp.float32(1.0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def ring(R):
        return memory.kv_cache_bytes(CFG, batch_size=4, prompt_len=16, num_slots=R,
                                     max_new_tokens=Tl, dtype=jnp.float32)["ring_bytes"]

    assert temp_bytes(N) - temp_bytes(N // 4) >= ring(N - N // 4) - ring(N // 8)
