"""The policy model's forward paths agree with each other: prefill + KV-cache decode (one
token per decode slot; G rows per prompt reading its prefix once in lock-step or by a
per-slot gather; slots that start samples at different steps) equals the
full forward pass; the forward
pass with parameters sharded over a (data, fsdp, tensor) = (2, 2, 2) mesh equals the
single-device one; remat changes neither logits nor gradients.

Uses a tiny random model with every option switched on (GQA, q/k/v and o biases, q/k norm,
Llama 3 rope scaling, untied head) and all parameters random (no zero biases, no unit norms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params
from flax import nnx
from jax.sharding import PartitionSpec as P

from reason_jax.models import KVCache, ModelConfig, Transformer, export_hf, from_hf
from reason_jax.sharding.mesh import make_mesh
from reason_jax.sharding.rules import ROLLOUT_RULES, batch_sharding

VOCAB = 101
S = 7  # prompt slots (left-padded)
NEW = 6  # tokens after the prompt
PROMPT_LENS = (7, 4)  # row 1 has 3 left pads
TOL = 1e-5

CFG = ModelConfig(
    vocab_size=VOCAB, dim=48, num_layers=2, num_heads=6, num_kv_heads=2, head_dim=8, mlp_dim=72,
    arch="qwen3", rope_theta=10000.0, norm_eps=1e-5, qkv_bias=True, o_bias=True, qk_norm=True,
    tie_embeddings=False, max_position_embeddings=128,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 4},
)


def _random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return nnx.merge(*random_params(cfg, seed, scale=0.1))


@pytest.fixture(scope="module")
def model():
    return _random_model(CFG)


class Jitted:
    """The model's entry points under jax.jit (eager op-by-op dispatch is slow on CPU)."""

    def __init__(self, model):
        self.graphdef, self.state = nnx.split(model)
        gd = self.graphdef
        self._fwd = jax.jit(lambda st, t, p, v: nnx.merge(gd, st)(t, p, v))
        self._prefill = jax.jit(lambda st, t, p, v: nnx.merge(gd, st).prefill(t, p, v))
        self._decode = jax.jit(lambda st, t, p, c: nnx.merge(gd, st).decode(t, p, c))

    def __call__(self, tokens, positions, valid):
        return self._fwd(self.state, tokens, positions, valid)

    def prefill(self, tokens, positions, valid):
        return self._prefill(self.state, tokens, positions, valid)

    def decode(self, tokens, positions, cache):
        return self._decode(self.state, tokens, positions, cache)


@pytest.fixture(scope="module")
def jitted(model):
    return Jitted(model)


def _prompts(rng, lens=PROMPT_LENS):
    B = len(lens)
    tokens = rng.integers(0, VOCAB, size=(B, S)).astype(np.int32)
    valid = np.zeros((B, S), bool)
    for b, n in enumerate(lens):
        valid[b, S - n:] = True
    tokens[~valid] = 0  # pad id
    return tokens, valid


def _positions(valid):
    return np.clip(np.cumsum(valid, axis=1) - 1, 0, None).astype(np.int32)


def _full_forward(model, prompt_tokens, prompt_valid, new_tokens):
    """Logits of the full forward pass over [prompt slots + new tokens] for every row."""
    tokens = np.concatenate([prompt_tokens, new_tokens], axis=1)
    valid = np.concatenate([prompt_valid, np.ones(new_tokens.shape, bool)], axis=1)
    pos = _positions(valid)
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(valid))), pos


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _prefilled(model, G):
    """Prompts, random continuations of N = B*G rows, and the full forward's logits."""
    rng = np.random.default_rng(1)
    tokens_BS, valid_BS = _prompts(rng)
    pos_BS = _positions(valid_BS)
    N = len(PROMPT_LENS) * G
    # Every row of a group continues with different tokens.
    new_NT = rng.integers(0, VOCAB, size=(N, NEW)).astype(np.int32)
    # Reference: full forward of [prompt b + row n's tokens] for row n = b*G + g.
    full, pos_full = _full_forward(model, np.repeat(tokens_BS, G, 0), np.repeat(valid_BS, G, 0),
                                   new_NT)
    assert np.all(np.isfinite(full))
    last_BV, (k, v) = model.prefill(jnp.asarray(tokens_BS), jnp.asarray(pos_BS),
                                    jnp.asarray(valid_BS))
    assert k.shape == v.shape == (CFG.num_layers, len(PROMPT_LENS), S, CFG.num_kv_heads,
                                  CFG.head_dim)
    d_prefill = _max_diff(last_BV, full[::G, S - 1])
    assert d_prefill <= TOL, d_prefill
    return k, v, jnp.asarray(valid_BS), new_NT, full, pos_full


@pytest.mark.parametrize("group_size, lockstep, chunks", [
    (1, True, 1), (3, True, 1), (3, False, 1), (3, True, 2)],
    ids=["G1-lockstep", "G3-lockstep", "G3-gathered-prefix", "G3-lockstep-2-chunks"])
def test_cached_decode_matches_full_forward(jitted, group_size, lockstep, chunks):
    """All rows start together (one slot per row), token by token, with more cache columns
    than tokens (unwritten columns must stay masked); with the cache in 2 chunks, the first
    steps skip the second chunk."""
    model, G = jitted, group_size
    k, v, valid_BS, new_NT, full, pos_full = _prefilled(model, G)
    N = new_NT.shape[0]
    cache = KVCache.create(k, v, valid_BS, num_slots=N, max_new_tokens=NEW + 2,
                           group_size=G if lockstep else 0, cache_chunks=chunks)
    cache = cache.assign(jnp.ones(N, bool), jnp.arange(N) // G)
    got = []
    for t in range(NEW):
        logits, cache = model.decode(jnp.asarray(new_NT[:, t]), jnp.asarray(pos_full[:, S + t]),
                                     cache)
        assert logits.shape == (N, VOCAB)
        got.append(np.asarray(logits))
    got = np.stack(got, 1)
    assert (np.asarray(cache.slot_fed_R) == NEW).all()
    d = _max_diff(got, full[:, S:])
    print(f"\n[cache] G={G} lockstep={lockstep} chunks={chunks}: decode {d:.2e}")
    assert d <= TOL, d
    # The rows of a group really differ (so G>1 tests per-row caches, not a broadcast).
    if G > 1:
        assert _max_diff(got[0], got[1]) > 1e-2


def test_slots_start_rows_at_any_step(jitted):
    """Two slots with exactly NEW cache columns, rows started at different steps (a new row
    reuses the columns of the slot's previous one), idle steps that feed junk, and prompts
    gathered per slot: every fed token's logits equal the full forward of its row."""
    model, G = jitted, 3
    k, v, valid_BS, new_NT, full, pos_full = _prefilled(model, G)
    assert new_NT.shape[0] == 6
    # Per slot, its rows in order (None: one idle step), unrolled to one (row, t) per step.
    plans = [[0, 4, None, 2], [None, None, 1, 5, 3]]
    steps = [[step for r in plan
              for step in ([(None, None)] if r is None else [(r, t) for t in range(NEW)])]
             for plan in plans]
    n_steps = max(len(s) for s in steps)
    assert n_steps > 2 * NEW  # each slot runs several rows
    cache = KVCache.create(k, v, valid_BS, num_slots=2, max_new_tokens=NEW)
    checked = 0
    for step in range(n_steps):
        items = [s[step] if step < len(s) else (None, None) for s in steps]
        start = np.array([t == 0 for _, t in items])
        prompt = np.array([r // G if t is not None else 0 for r, t in items])
        cache = cache.assign(jnp.asarray(start), jnp.asarray(prompt, jnp.int32))
        tok = np.array([new_NT[r, t] if t is not None else 11 for r, t in items], np.int32)
        pos = np.array([pos_full[r, S + t] if t is not None else 3 for r, t in items], np.int32)
        logits, cache = model.decode(jnp.asarray(tok), jnp.asarray(pos), cache)
        for slot, (r, t) in enumerate(items):
            if t is not None:
                d = _max_diff(logits[slot], full[r, S + t])
                assert d <= TOL, (step, slot, r, t, d)
                checked += 1
    assert checked == NEW * 6


def test_left_padding_is_invisible(jitted):
    """A prompt's logits do not depend on left padding before it (nor on anything after it)."""
    model, pads, T = jitted, 3, S + NEW  # same shape as the full forward above: no recompile
    prompt = np.random.default_rng(3).integers(1, VOCAB, size=T - pads).astype(np.int32)
    junk = np.array([7, 8, 9], np.int32)
    tokens = np.stack([np.concatenate([prompt, junk]), np.concatenate([junk * 0 + 5, prompt])])
    valid = np.ones((2, T), bool)
    valid[1, :pads] = False
    out = np.asarray(model(jnp.asarray(tokens), jnp.asarray(_positions(valid)),
                           jnp.asarray(valid)))
    assert np.all(np.isfinite(out))  # fully masked pad queries stay finite
    assert _max_diff(out[1, pads:], out[0, :T - pads]) <= TOL


# ---------------------------------------------------------------------------------------------
# Sharded forward
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ckpt"))
    export_hf(nnx.state(model).to_pure_dict(), model.cfg, out)
    return out


@pytest.mark.parametrize("rules", [None, ROLLOUT_RULES], ids=["train_rules", "rollout_rules"])
def test_sharded_forward_matches_single_device(model, jitted, checkpoint, rules):
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    single = from_hf(checkpoint)
    sharded = from_hf(checkpoint, mesh=mesh, rules=rules)

    q = sharded.layers[0].attn.q_DQH[...]
    embed_axis = None if rules is ROLLOUT_RULES else "fsdp"
    assert q.sharding.spec == P(embed_axis, "tensor", None)
    blocks = {tuple((i.start, i.stop) for i in s.index) for s in q.addressable_shards}
    assert len(blocks) == (2 if rules else 4)  # distinct pieces of q over the 8 devices
    assert q.addressable_shards[0].data.shape[1] == CFG.num_heads // 2
    assert sharded.layers[1].mlp.down_FD[...].sharding.spec == P("tensor", embed_axis)
    # vocab 101 is not divisible by tensor=2: replicated on that dim instead of failing.
    assert sharded.lm_head_DV[...].sharding.spec[1] is None

    rng = np.random.default_rng(4)
    B, T = 4, 12
    tokens = rng.integers(0, VOCAB, size=(B, T)).astype(np.int32)
    valid = np.ones((B, T), bool)
    valid[1, :5] = False
    valid[3, :2] = False
    pos = _positions(valid)
    # The single-device import is exactly our model; its (jitted) forward is the reference.
    jax.tree.map(np.testing.assert_array_equal, nnx.state(single).to_pure_dict(),
                 nnx.state(model).to_pure_dict())
    ref = np.asarray(jitted(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(valid)))

    graphdef, state = nnx.split(sharded)

    @jax.jit
    def forward(state, tokens, pos, valid):
        return nnx.merge(graphdef, state)(tokens, pos, valid)

    bs = batch_sharding(mesh, 2)
    args = [jax.device_put(jnp.asarray(a), bs) for a in (tokens, pos, valid)]
    got = forward(state, *args)
    d = _max_diff(got, ref)
    print(f"\n[mesh] (2,2,2) {'rollout' if rules else 'train'} rules: max diff {d:.2e}")
    assert d <= TOL, d


# ---------------------------------------------------------------------------------------------
# Remat
# ---------------------------------------------------------------------------------------------


def test_remat_same_logits_and_gradients(model):
    graphdef, state = nnx.split(model)
    cfg_r = model.cfg.replace(remat=True)
    graphdef_r, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg_r, rngs=nnx.Rngs(0))))
    remat_model = nnx.merge(graphdef_r, state)
    assert remat_model.cfg.remat and not model.cfg.remat

    rng = np.random.default_rng(5)
    tokens = jnp.asarray(rng.integers(0, VOCAB, size=(2, 10)).astype(np.int32))
    valid_np = np.ones((2, 10), bool)
    valid_np[1, :3] = False
    valid, pos = jnp.asarray(valid_np), jnp.asarray(_positions(valid_np))
    w = jnp.asarray(rng.normal(size=(2, 10, VOCAB)).astype(np.float32))

    def loss(gd):
        def f(state):
            logits = nnx.merge(gd, state)(tokens, pos, valid)
            logp = jax.nn.log_softmax(logits, -1)
            return jnp.sum(logp * w * valid[..., None]), logits
        return jax.jit(jax.value_and_grad(f, has_aux=True)).trace(state)

    traced_r, traced = loss(graphdef_r), loss(graphdef)
    # The remat flag must actually change the program (a checkpoint/remat primitive).
    jaxpr_r, jaxpr = str(traced_r.jaxpr), str(traced.jaxpr)
    assert "remat" in jaxpr_r or "checkpoint" in jaxpr_r
    assert "remat" not in jaxpr and "checkpoint" not in jaxpr

    # Low backend optimisation: same maths, half the CPU compile time.
    opts = {"xla_backend_optimization_level": 0}
    (lr, logits_r), gr = traced_r.lower().compile(opts)(state)
    (l0, logits_0), g0 = traced.lower().compile(opts)(state)
    np.testing.assert_allclose(np.asarray(logits_r), np.asarray(logits_0), atol=1e-6, rtol=0)
    assert abs(float(lr) - float(l0)) <= 1e-4 * max(1.0, abs(float(l0)))
    flat_r, flat_0 = jax.tree.leaves(gr), jax.tree.leaves(g0)
    assert len(flat_r) == len(flat_0) > 0
    worst = max(_max_diff(a, b) for a, b in zip(flat_r, flat_0))
    scale = max(float(jnp.max(jnp.abs(b))) for b in flat_0)
    print(f"\n[remat] loss {float(l0):.4f}; max grad diff {worst:.2e} (grad scale {scale:.2e})")
    assert worst <= 1e-5 * max(1.0, scale)
