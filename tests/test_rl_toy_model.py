"""A tiny context-dependent model and rollout batches shared by the RL train-step tests.

(Named test_rl_* so it lives with the RL tests; the other test modules import from it.)"""

import jax
import jax.numpy as jnp
import numpy as np

from reason_jax import rl

V, D, S, T = 16, 8, 4, 6
L = S + T


def init_params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "emb_VD": jax.random.normal(k1, (V, D)) * 0.5,
        "pos_LD": jax.random.normal(k2, (L, D)) * 0.1,
        "out_DV": jax.random.normal(k3, (D, V)) * 0.5,
    }


def apply_fn(params, tokens_NX, positions_NX, valid_NX):
    """Causal mean of valid token embeddings + position embedding -> tanh -> vocab."""
    x_NLD = params["emb_VD"][tokens_NX] * valid_NX[..., None]
    count_NL1 = jnp.maximum(jnp.cumsum(valid_NX, axis=1), 1)[..., None]
    h_NLD = jnp.tanh(jnp.cumsum(x_NLD, axis=1) / count_NL1 + params["pos_LD"][positions_NX])
    return h_NLD @ params["out_DV"]


# Jitted once per process: eager dispatch of the many small ops is slower than compiling.
_logprobs = jax.jit(lambda params, batch: rl.completion_logprobs(apply_fn, params, batch, T))


def make_batch(n=16, seed=0, *, with_ref=True, noise=0.05):
    rng = np.random.default_rng(seed)
    prompt_len_N = rng.integers(1, S + 1, n)
    resp_len_N = rng.integers(1, T + 1, n)  # unequal completion lengths
    tokens = rng.integers(1, V, (n, L)).astype(np.int32)
    valid = np.zeros((n, L), bool)
    for i in range(n):
        valid[i, S - prompt_len_N[i] : S + resp_len_N[i]] = True
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0) * valid
    mask = valid[:, S:].astype(np.float32)
    batch = {
        "tokens_NX": jnp.asarray(tokens),
        "positions_NX": jnp.asarray(positions, jnp.int32),
        "valid_NX": jnp.asarray(valid),
        "mask_NT": jnp.asarray(mask),
        "adv_N": jnp.asarray(rng.normal(size=n), jnp.float32),
    }
    logp, _ = _logprobs(init_params(), batch)
    batch["sampler_logp_NT"] = logp + noise * jnp.asarray(rng.normal(size=(n, T)), jnp.float32)
    if with_ref:
        batch["ref_logp_NT"] = logp + noise * jnp.asarray(rng.normal(size=(n, T)), jnp.float32)
    return batch


def test_toy_batch_layout():
    batch = make_batch(4)
    assert batch["tokens_NX"].shape == (4, L) and batch["mask_NT"].shape == (4, T)
    # Loss mask = the valid completion tokens; prompts are left-padded (last prompt column real).
    np.testing.assert_array_equal(batch["mask_NT"], batch["valid_NX"][:, S:])
    assert bool(jnp.all(batch["valid_NX"][:, S - 1]))
    logits = apply_fn(init_params(), batch["tokens_NX"], batch["positions_NX"], batch["valid_NX"])
    assert logits.shape == (4, L, V)
