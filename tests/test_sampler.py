"""The fused group sampler (`reason_jax.sampling.generate`).

Checked against references that share none of its machinery:
  * greedy decoding == step-by-step greedy with full forward passes and no KV cache (prompts of
    different lengths, right- and left-padded layouts, G > 1), and == transformers' greedy
    `generate` on tiny random Llama / Qwen2 checkpoints imported with `from_hf`;
  * returned log-probs == log-softmax of a full forward pass's logits / tau (tau = the sampling
    temperature, 1 for greedy), untruncated, also when sampling with top-k / top-p;
  * seeded sampling is reproducible, differs across seeds and across the rows of a group;
    top_k=1 and a tiny top_p are greedy; draws follow the truncated, tempered distribution
    (token frequencies), from Threefry-2x32 (known-answer vectors) Gumbel noise;
  * EOS: mask/length/truncation/padding after the stop, several EOS ids;
  * no recompilation for new prompts in the same length bucket;
  * sharded over (data, tensor) = (4, 2) and (data, fsdp, tensor) = (2, 2, 2) meshes with the
    rollout layout: same tokens as on one device, log-probs within 1e-5.

A tiny random model (vocab 24, width 32, GQA) with large enough weights that its next-token
distributions are far from uniform (greedy ties cannot flip on rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params
from flax import nnx

from reason_jax import rl
from reason_jax.models import from_hf
from reason_jax.models.config import tiny_llama
from reason_jax.sampling import generate
from reason_jax.sampling import processing
from reason_jax.sampling import sampler as sampler_mod
from reason_jax.sharding import make_mesh
from reason_jax.sharding.host_arrays import to_global
from reason_jax.run.policy import Policy

VOCAB = 24
PAD = VOCAB - 1  # not 0, so a hard-coded pad id would show
T = 8  # max_new_tokens
G = 4  # one group size everywhere: greedy and sampled calls share one compiled program
CFG = tiny_llama(VOCAB, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 mlp_dim=64, tie_embeddings=False)
# Right-padded prompts of different lengths (1 and a full bucket of 16 included).
LENGTHS = np.array([5, 16, 1, 11], np.int32)
LOGP_TOL = 1e-5


def _random_params(cfg, seed: int):
    return random_params(cfg, seed, scale=0.2)


def _prompts(lengths, seed=0, width=None):
    """Right-padded prompt ids (never the pad id) of the given lengths."""
    rng = np.random.default_rng(seed)
    width = width or int(max(lengths))
    toks = rng.integers(0, PAD, size=(len(lengths), width)).astype(np.int32)
    toks[np.arange(width)[None, :] >= np.asarray(lengths)[:, None]] = PAD
    return toks


@pytest.fixture(scope="module")
def params():
    return _random_params(CFG, seed=0)


@pytest.fixture(scope="module")
def forward(params):
    graphdef, _ = params

    @jax.jit
    def fwd(state, tokens_NX, positions_NX, valid_NX):
        return nnx.merge(graphdef, state)(tokens_NX, positions_NX, valid_NX)

    return fwd


@pytest.fixture(scope="module")
def prompts():
    return _prompts(LENGTHS)


def _gen(params, prompts, lengths=LENGTHS, **kw):
    kw.setdefault("group_size", G)
    kw.setdefault("max_new_tokens", T)
    kw.setdefault("pad_id", PAD)
    out = generate(params, prompts, lengths, **kw)
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def greedy(params, prompts):
    return _gen(params, prompts, temperature=0.0)


def _train_layout(out):
    """SampleOutput -> (tokens_NX, positions_NX, valid_NX): the layout the train step scores,
    from its one owner."""
    return rl.row_layout(np.asarray(out.prompt_tokens), out.prompt_valid,
                         np.asarray(out.tokens), out.mask)


def _full_logp(forward, params, out, tau=1.0):
    """log-softmax(logits / tau) of a full forward pass (no cache) at every completion slot:
    [N, T, V]."""
    tokens_NX, positions_NX, valid_NX = _train_layout(out)
    S = out.prompt_tokens.shape[1]
    logits = forward(params[1], tokens_NX, positions_NX, valid_NX)
    return np.asarray(jax.nn.log_softmax(logits[:, S - 1:S - 1 + T] / tau, -1))


def _greedy_reference_right(forward, params, prompts, lengths, steps):
    """Step-by-step greedy, right-padded rows, default positions/validity, no cache."""
    B = len(lengths)
    buf = np.full((B, 16 + steps), PAD, np.int32)  # one width: one compiled forward
    buf[:, :prompts.shape[1]] = prompts
    L = buf.shape[1]
    pos = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
    ones = np.ones((B, L), bool)
    out = np.zeros((B, steps), np.int32)
    for t in range(steps):
        logits = np.asarray(forward(params[1], buf, pos, ones))
        nxt = logits[np.arange(B), lengths - 1 + t].argmax(-1)
        buf[np.arange(B), lengths + t] = nxt
        out[:, t] = nxt
    return out


def _greedy_reference_left(forward, params, prompts, lengths, steps):
    """Step-by-step greedy, prompts left-padded (explicit positions and validity), no cache."""
    B, S = prompts.shape
    left = np.full((B, S + steps), PAD, np.int32)
    valid = np.zeros((B, S + steps), bool)
    for b, n in enumerate(lengths):
        left[b, S - n:S] = prompts[b, :n]
        valid[b, S - n:S] = True
    out = np.zeros((B, steps), np.int32)
    for t in range(steps):
        pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
        logits = np.asarray(forward(params[1], left, pos, valid))
        nxt = logits[:, S - 1 + t].argmax(-1)
        left[:, S + t] = nxt
        valid[:, S + t] = True
        out[:, t] = nxt
    return out


# ---------------------------------------------------------------------------------------------
# Greedy
# ---------------------------------------------------------------------------------------------


def test_greedy_equals_full_forward_greedy(forward, params, prompts, greedy):
    ref_right = _greedy_reference_right(forward, params, prompts, LENGTHS, T)
    ref_left = _greedy_reference_left(forward, params, prompts, LENGTHS, T)
    np.testing.assert_array_equal(ref_left, ref_right)
    # The prompts differ, so the completions should too (a degenerate model proves little).
    assert len({tuple(r) for r in ref_left}) > 1
    N = len(LENGTHS) * G
    assert greedy.tokens.shape == (N, T)
    np.testing.assert_array_equal(greedy.tokens, np.repeat(ref_left, G, axis=0))
    assert greedy.mask.all() and greedy.truncated.all()  # no EOS ids: all run to T
    np.testing.assert_array_equal(greedy.lengths, np.full(N, T))
    # Prompts come back left-padded to the bucket (16), row b*G + g belonging to prompt b.
    assert greedy.prompt_tokens.shape == (N, 16)
    for n in range(N):
        b = n // G
        n_pad = 16 - LENGTHS[b]
        np.testing.assert_array_equal(greedy.prompt_valid[n], np.arange(16) >= n_pad)
        np.testing.assert_array_equal(greedy.prompt_tokens[n, n_pad:], prompts[b, :LENGTHS[b]])
        assert (greedy.prompt_tokens[n, :n_pad] == PAD).all()


def test_greedy_prompt_width_below_bucket(forward, params, prompts, greedy):
    """Right-padded input narrower than its bucket (11 -> 16) gives the same completions."""
    lengths = np.array([5, 11, 1, 11], np.int32)
    narrow = _prompts(lengths, seed=3)
    out = _gen(params, narrow, lengths, temperature=0.0)
    ref = _greedy_reference_right(forward, params, narrow, lengths, T)
    np.testing.assert_array_equal(out.tokens, np.repeat(ref, G, axis=0))


def test_greedy_logprobs_equal_full_forward(forward, params, greedy):
    full = _full_logp(forward, params, greedy)
    want = np.take_along_axis(full, greedy.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(greedy.logprobs, want, atol=LOGP_TOL, rtol=0)
    # Greedy picked the argmax of the full-forward distribution at every step.
    np.testing.assert_array_equal(greedy.tokens, full.argmax(-1))


# ---------------------------------------------------------------------------------------------
# transformers parity
# ---------------------------------------------------------------------------------------------

HF_CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
}


@pytest.mark.parametrize("name", list(HF_CASES))
def test_greedy_matches_transformers_generate(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg_cls, model_cls, extra = HF_CASES[name]
    # No EOS/BOS: transformers must not stop early, and we compare all T tokens.
    hf_cfg = getattr(transformers, cfg_cls)(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
        pad_token_id=PAD, **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(hf_cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if pname.endswith("norm.weight")
                    else 0.1 * noise if pname.endswith(".bias") else 0.3 * noise)
    hf.save_pretrained(str(tmp_path))
    hf.config._attn_implementation = "eager"

    lengths = np.array([3, 9, 6], np.int32)
    prompts = _prompts(lengths, seed=7)
    ours = _gen(from_hf(str(tmp_path), dtype=jnp.float32), prompts, lengths, group_size=1,
                temperature=0.0)
    for b, n in enumerate(lengths):
        ids = torch.as_tensor(prompts[b:b + 1, :n], dtype=torch.long)
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=T, eos_token_id=None, pad_token_id=PAD)
        ref = ref[0, n:].numpy()
        assert ref.shape == (T,)
        np.testing.assert_array_equal(ours.tokens[b], ref, err_msg=f"{name} prompt {b}")


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(params, prompts):
    return _gen(params, prompts, temperature=1.5, seed=11)


def test_seeded_sampling_reproducible_and_diverse(params, prompts, sampled):
    again = _gen(params, prompts, temperature=1.5, seed=11)
    for a, b in zip(jax.tree.leaves(sampled), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = _gen(params, prompts, temperature=1.5, seed=12)
    assert not np.array_equal(other.tokens, sampled.tokens)
    # Same for a PRNG-key seed.
    key = jax.random.key(5)
    k1 = _gen(params, prompts, temperature=1.5, seed=key)
    k2 = _gen(params, prompts, temperature=1.5, seed=key)
    np.testing.assert_array_equal(k1.tokens, k2.tokens)
    # Every group's 4 rows are not all the same completion.
    for b in range(len(LENGTHS)):
        rows = {tuple(r) for r in sampled.tokens[b * 4:(b + 1) * 4]}
        assert len(rows) > 1, f"group {b} sampled {rows}"


def test_sampled_logprobs_are_tempered_policy_logprobs(forward, params, sampled):
    """Sampled at temperature 1.5: log-probs of softmax(logits / 1.5)."""
    full = _full_logp(forward, params, sampled, tau=1.5)
    want = np.take_along_axis(full, sampled.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(sampled.logprobs, want, atol=LOGP_TOL, rtol=0)


def test_filtered_sampling_logprobs_untruncated(forward, params, prompts):
    """temperature 0.6 + top-k 5 + top-p 0.9: tokens come from the truncated distribution
    (inside the top 5, inside the nucleus), log-probs are log_softmax(logits / 0.6) of a full
    forward pass, not truncated, and not the temperature-1 ones."""
    out = _gen(params, prompts, temperature=0.6, top_k=5, top_p=0.9, seed=3)
    tempered = _full_logp(forward, params, out, tau=0.6)
    tempered_tok = np.take_along_axis(tempered, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, tempered_tok, atol=LOGP_TOL, rtol=0)
    # Not the temperature-1 log-probs (the distribution is far from uniform) ...
    plain = _full_logp(forward, params, out)
    plain_tok = np.take_along_axis(plain, out.tokens[..., None], -1)[..., 0]
    assert np.abs(plain_tok - out.logprobs).max() > 1e-2
    # ... nor renormalised over the kept tokens: some step had mass outside the top 5.
    assert (np.exp(tempered_tok) < 1 - 1e-3).any()
    rank = (tempered > tempered_tok[..., None]).sum(-1)
    assert (rank < 5).all(), rank
    # ... and top-p also truncates: nucleus of the tempered distribution.
    tok_p = np.exp(tempered_tok)
    mass_above = np.where(np.exp(tempered) > tok_p[..., None], np.exp(tempered), 0).sum(-1)
    assert (mass_above < 0.9 + 1e-5).all()


def test_top_k_1_is_greedy(params, prompts, greedy):
    out = _gen(params, prompts, temperature=1.0, seed=4, top_k=1)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-6)


def test_tiny_top_p_is_greedy(params, prompts, greedy):
    # top_k=5 keeps the argmax, so top_p alone makes this greedy (and top_p is a traced
    # argument: this reuses the program of the filtered-sampling test).
    out = _gen(params, prompts, temperature=1.0, seed=4, top_k=5, top_p=1e-6)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-6)


def test_threefry_known_answers():
    """The counter-based hash behind every draw is Threefry-2x32-20 (Random123's test
    vectors, also jax.random's)."""
    for key, ctr, want in [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                           ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
                           ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3),
                            (0xC4923A9C, 0x483DF7A0))]:
        got = processing.threefry2x32(*key, *ctr)
        assert tuple(int(x) for x in got) == want


def test_draws_follow_the_truncated_tempered_distribution():
    """Many samples (different n) of one row of logits: token frequencies match
    softmax(logits / 0.8) restricted to the top 4 and renormalised; the noise is standard
    Gumbel and a (key, n, t) counter always gives the same draw."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=12) * 1.5, jnp.float32)
    n_draws = 20000
    words = processing.key_words(jax.random.key(3))
    n = jnp.arange(n_draws, dtype=jnp.int32)
    draw = jax.jit(lambda n, t: processing.sample_tokens(
        words, n, t, jnp.broadcast_to(logits, (n.shape[0], 12)), temperature=0.8, top_k=4,
        top_p=None))
    tok, logp = draw(n, jnp.full_like(n, 5))
    p = np.asarray(jax.nn.softmax(logits / 0.8))
    np.testing.assert_allclose(np.asarray(logp), np.log(p[np.asarray(tok)]), rtol=1e-5)
    top4 = np.argsort(-p)[:4]
    want = np.zeros(12)
    want[top4] = p[top4] / p[top4].sum()
    freq = np.bincount(np.asarray(tok), minlength=12) / n_draws
    assert np.abs(freq - want).max() < 0.015, (freq, want)
    again, _ = draw(n[:100], jnp.full((100,), 5, jnp.int32))
    np.testing.assert_array_equal(again, tok[:100])
    other, _ = draw(n[:100], jnp.full((100,), 6, jnp.int32))
    assert not np.array_equal(other, tok[:100])
    g = np.asarray(processing.gumbel_noise(words, n[:64], jnp.zeros(64, jnp.int32), 4096))
    assert abs(g.mean() - np.euler_gamma) < 0.01 and abs(g.std() - np.pi / np.sqrt(6)) < 0.02


# ---------------------------------------------------------------------------------------------
# EOS
# ---------------------------------------------------------------------------------------------


def _expected_stop(tokens_T, eos_ids):
    hits = np.flatnonzero(np.isin(tokens_T, list(eos_ids)))
    return int(hits[0]) + 1 if len(hits) else None


def _check_eos(out, ref, eos_ids):
    """`out` is `ref` (same call without EOS ids) cut at each row's first EOS."""
    for n in range(out.tokens.shape[0]):
        stop = _expected_stop(ref.tokens[n], eos_ids)
        if stop is None:
            assert out.truncated[n] and out.lengths[n] == T and out.mask[n].all()
            np.testing.assert_array_equal(out.tokens[n], ref.tokens[n])
            continue
        assert not out.truncated[n] and out.lengths[n] == stop, n
        np.testing.assert_array_equal(out.mask[n], np.arange(T) < stop)
        np.testing.assert_array_equal(out.tokens[n, :stop], ref.tokens[n, :stop])
        assert out.tokens[n, stop - 1] in eos_ids
        assert (out.tokens[n, stop:] == PAD).all()
        np.testing.assert_allclose(out.logprobs[n, :stop], ref.logprobs[n, :stop], atol=1e-6)
        assert (out.logprobs[n, stop:] == 0).all()


@pytest.fixture(scope="module")
def eos_id(greedy):
    """EOS := the token row 0 emits at step 2 (some other row never emits it)."""
    eos = int(greedy.tokens[0, 2])
    assert any(_expected_stop(r, [eos]) is None for r in greedy.tokens), "pick another eos"
    return eos


def test_eos_stops_row(params, prompts, greedy, eos_id):
    k = _expected_stop(greedy.tokens[0], [eos_id]) - 1  # 2, unless emitted earlier too
    assert k <= 2
    out = _gen(params, prompts, temperature=0.0, eos_ids=[eos_id])
    assert out.lengths[0] == k + 1 and out.mask[0].sum() == k + 1 and not out.truncated[0]
    assert out.tokens[0, k] == eos_id and (out.tokens[0, k + 1:] == PAD).all()
    assert out.truncated.any(), "some row never emits the EOS: truncated with length T"
    _check_eos(out, greedy, [eos_id])


def test_eos_with_sampling(forward, params, prompts, sampled, eos_id):
    out = _gen(params, prompts, temperature=1.5, seed=11, eos_ids=[eos_id])
    _check_eos(out, sampled, [eos_id])
    full = _full_logp(forward, params, out, tau=1.5)
    want = np.take_along_axis(full, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, np.where(out.mask, want, 0), atol=LOGP_TOL, rtol=0)


def test_several_eos_ids_all_rows_stop(params, prompts, greedy):
    """Each prompt's first greedy token is an EOS id (several distinct ids): every row stops
    at step 0 on its own id, and the decode loop exits with the later slots still pad."""
    eos = sorted({int(t) for t in greedy.tokens[:, 0]})
    assert len(eos) > 1
    out = _gen(params, prompts, temperature=0.0, eos_ids=eos)
    np.testing.assert_array_equal(out.lengths, np.ones(len(out.lengths)))
    assert not out.truncated.any()
    assert (out.tokens[:, 1:] == PAD).all() and (out.logprobs[:, 1:] == 0).all()
    _check_eos(out, greedy, eos)


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------


def test_no_recompilation_within_bucket(forward, params, greedy):
    cache = sampler_mod._sample._cache_size
    before = cache()
    for i, (width, lengths) in enumerate([(16, [16, 2, 9, 4]), (7, [7, 3, 1, 5]),
                                          (12, [1, 12, 12, 8]), (3, [3, 3, 2, 1])]):
        lengths = np.asarray(lengths, np.int32)
        p = _prompts(lengths, seed=20 + i, width=width)
        out = _gen(params, p, lengths, temperature=0.0 if i % 2 else 1.0, seed=i)
        if i % 2:  # spot-check correctness of the reused program
            ref = _greedy_reference_right(forward, params, p, lengths, T)
            np.testing.assert_array_equal(out.tokens, np.repeat(ref, G, axis=0))
    assert cache() == before, "generate recompiled for prompts within one bucket"

    # A new bucket compiles exactly once.
    for i, width in enumerate([17, 30, 32]):
        lengths = np.array([width, 5, 17, 1], np.int32)
        _gen(params, _prompts(lengths, seed=40 + i, width=width), lengths, temperature=0.0)
        assert cache() == before + 1
    assert _gen(params, _prompts([4] * 4, seed=1), np.full(4, 4)).prompt_tokens.shape[1] == 16
    assert cache() == before + 1

    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        generate(params, np.ones((1, 20), np.int32), [20], max_new_tokens=2, buckets=(8, 16))


# ---------------------------------------------------------------------------------------------
# Sharded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [{"data": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["data4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_matches_single_device(params, prompts, greedy, sampled, sizes):
    mesh = make_mesh(sizes)
    policy = Policy(CFG, mesh)
    train_params = jax.device_put(params[1], policy.train_shardings)
    rollout, _ = policy.to_rollout(train_params)
    # Heads stay split over `tensor`; the embedding dimension is gathered.
    assert rollout["layers"][0]["attn"]["q_DQH"].sharding.spec[1] == "tensor"
    assert all(s is None for s in rollout["embed_VD"].sharding.spec[1:])
    g_tokens, g_lengths = to_global((prompts, LENGTHS), mesh)
    assert len(g_tokens.sharding.device_set) == 8

    def run(**kw):
        return _gen((policy.graphdef, rollout), g_tokens, g_lengths, **kw)

    out = run(temperature=0.0)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=LOGP_TOL, rtol=0)
    np.testing.assert_array_equal(out.prompt_tokens, greedy.prompt_tokens)

    out = run(temperature=1.5, seed=11)
    np.testing.assert_array_equal(out.tokens, sampled.tokens)
    np.testing.assert_array_equal(out.mask, sampled.mask)
    np.testing.assert_allclose(out.logprobs, sampled.logprobs, atol=LOGP_TOL, rtol=0)
