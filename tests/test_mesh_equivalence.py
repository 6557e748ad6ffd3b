"""Mesh equivalence: the RL train step with the real Transformer (`Policy.apply_fn`) and the
fused sampler give the same numbers on every mesh layout.

Meshes are (data, fsdp, tensor) = (1, 1, 1) [one device, the reference], (8, 1, 1),
(2, 2, 2) and (1, 4, 2). The same parameters (one seed) are re-placed with each mesh's
`Policy.train_shardings`; the rollout batch is a real one: seeded samples of the
single-device sampler (left-padded prompts + completions, EOS-terminated rows of different
lengths, sampler log-probs as pi_old), in the train step's layout, placed with `to_global`.
One step of 2 minibatches x 2 micro-batches must agree in loss, grad_norm, the other metrics
and the updated parameters to ~1e-5; the sampler must give identical greedy and seeded tokens.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from reason_jax import rl
from reason_jax.models import Transformer
from reason_jax.models.config import tiny_llama
from reason_jax.sampling import generate
from reason_jax.sharding import make_mesh
from reason_jax.sharding.host_arrays import rows_sharding, to_global
from reason_jax.run.policy import Policy

VOCAB = 24
PAD = 0
EOS = (1, 2, 3)
B, G, S, T = 8, 4, 8, 8  # N = 32 rows: 2 minibatches x 2 micro-batches x 8 data shards
# One layer: every layer is sharded alike, and compile time dominates this file.
CFG = tiny_llama(VOCAB, dim=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                 mlp_dim=64)
STEP = rl.StepConfig(num_minibatches=2, micro_batches=2, recompute_old_logp=False,
                     entropy_coef=0.01)
TOL = 1e-5

MESHES = {
    "1x1x1": dict(data=1),
    "8x1x1": dict(data=8),
    "2x2x2": dict(data=2, fsdp=2, tensor=2),
    "1x4x2": dict(fsdp=4, tensor=2),
}


def _mesh(name):
    if name == "1x1x1":
        return make_mesh(MESHES[name], devices=jax.devices()[:1])
    return make_mesh(MESHES[name])


def _host_params(seed: int = 0):
    """One seed's parameters as host arrays; std 0.2 so next-token distributions are peaked
    enough that greedy choices cannot flip on rounding differences between layouts."""
    _, state = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        return 1.0 + 0.2 * noise if "norm" in jax.tree_util.keystr(path) else 0.2 * noise

    return jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())


def _prompts():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, S + 1, size=B).astype(np.int32)
    lengths[0] = S
    toks = rng.integers(4, VOCAB, size=(B, S)).astype(np.int32)  # no EOS / pad in prompts
    toks[np.arange(S)[None, :] >= lengths[:, None]] = PAD
    return toks, lengths


def _sample(policy, params, mesh):
    """Greedy and seeded samples with the rollout layout on `mesh` (host arrays)."""
    rollout, _ = policy.to_rollout(params)
    toks, lengths = to_global(_prompts(), mesh)
    kw = dict(group_size=G, max_new_tokens=T, eos_ids=EOS, pad_id=PAD, buckets=(S,))
    greedy = generate((policy.graphdef, rollout), toks, lengths, temperature=0.0, **kw)
    sampled = generate((policy.graphdef, rollout), toks, lengths, temperature=1.0, seed=7, **kw)
    return jax.tree.map(np.asarray, (greedy, sampled))


def _train_batch(out):
    """SampleOutput -> the train step's batch (as `run.rollout.train_batch` builds it)."""
    tokens_NX, positions_NX, valid_NX = rl.row_layout(out.prompt_tokens, out.prompt_valid,
                                                      out.tokens, out.mask)
    adv = np.random.default_rng(2).normal(size=out.tokens.shape[0]).astype(np.float32)
    return {
        "tokens_NX": tokens_NX,
        "positions_NX": positions_NX,
        "valid_NX": valid_NX,
        "mask_NT": out.mask.astype(np.float32),
        "adv_N": adv,
        "sampler_logp_NT": out.logprobs.astype(np.float32),
    }


def _run(name, batch=None):
    """Sample, then one train step, on mesh `name`. Returns host results."""
    mesh = _mesh(name)
    policy = Policy(CFG, mesh)
    params = jax.device_put(_host_params(), policy.train_shardings)
    greedy, sampled = _sample(policy, params, mesh)
    if batch is None:  # the reference mesh builds the batch from its own samples
        batch = _train_batch(sampled)

    opt = rl.make_optimizer(3e-3, warmup_steps=0, total_steps=10, weight_decay=0.1)
    state_shardings = rl.train_state_shardings(policy.abstract_params, opt,
                                               policy.train_shardings)
    state = jax.jit(rl.create_train_state, static_argnums=1,
                    out_shardings=state_shardings)(params, opt)
    step = rl.make_train_step(policy.apply_fn, opt, STEP,
                              rl.StepShardings(state_shardings, rows_sharding(mesh, 1)))
    state, metrics = step(state, to_global(batch, mesh))
    # The updated parameters keep the training layout.
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(policy.train_shardings)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    return dict(greedy=greedy, sampled=sampled, batch=batch,
                params=jax.tree.map(np.asarray, state.params),
                metrics={k: float(v) for k, v in metrics.items()}, step=int(state.step))


@pytest.fixture(scope="module")
def reference():
    return _run("1x1x1")


def test_reference_step_is_meaningful(reference):
    m, batch, greedy = reference["metrics"], reference["batch"], reference["greedy"]
    # Rows of several lengths, some stopped by EOS, some truncated.
    lengths = batch["mask_NT"].sum(1)
    assert len(set(lengths.tolist())) > 2 and (lengths < T).any() and (lengths == T).any()
    assert len({tuple(r) for r in greedy.tokens}) > 1
    assert reference["step"] == 2 and m["updates"] == 2 and m["nonfinite_skipped"] == 0
    assert np.isfinite(m["loss"]) and m["grad_norm"] > 1e-3
    # The update moved every parameter tensor.
    before = _host_params()
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(reference["params"])):
        assert np.abs(new - old).max() > 1e-4


@pytest.mark.parametrize("name", [n for n in MESHES if n != "1x1x1"])
def test_mesh_matches_single_device(reference, name):
    got = _run(name, batch=reference["batch"])

    # Sampler: identical tokens, log-probs within TOL.
    for kind in ("greedy", "sampled"):
        a, b = got[kind], reference[kind]
        np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=kind)
        np.testing.assert_array_equal(a.mask, b.mask, err_msg=kind)
        np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens, err_msg=kind)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=TOL, rtol=0, err_msg=kind)

    # Train step: metrics and updated parameters.
    assert got["step"] == reference["step"]
    for k, want in reference["metrics"].items():
        np.testing.assert_allclose(got["metrics"][k], want, rtol=TOL, atol=1e-6, err_msg=k)
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(reference["params"])[0]]
    leaves = zip(paths, jax.tree.leaves(got["params"]), jax.tree.leaves(reference["params"]))
    for path, a, b in leaves:
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=path)
