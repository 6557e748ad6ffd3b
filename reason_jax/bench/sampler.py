"""`reason-jax bench sampler`: throughput of the fused group sampler, its decode roofline, and
(optionally) the same weights sampled by Hugging Face transformers on CPU.

Sizes: the model from the config's `model` section, B = rollout.batch_size prompts of length
S (data.buckets[0], or $REASON_JAX_BENCH_PROMPT_LEN), G = rollout.group_size samples each,
T = rollout.max_new_tokens with EOS disabled, so every row runs all T decode steps.

Timing: the first `generate` call (compile + run) and `--iters` steady calls (median). The
prefill alone (a jitted `model.prefill` on the same prompts) is timed the same way; decode
time = steady generate time - prefill time.

Roofline: a decode step must read every weight once and the KV cache written so far; per
device, bytes/step = rollout-layout parameter bytes + prefix K/V [L,B,S,K,H] x 2 + decode K/V
[L,N,T/2 (the average filled length),K,H] x 2. Divided by (time per step x the bandwidth
measured in this run on this device) it is the fraction of the memory roofline reached.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reason_jax.bench import common
from reason_jax.sampling import generate
from reason_jax.data.bucketing import bucket_length
from reason_jax.sampling.sampler import left_align
from reason_jax.sharding.host_arrays import to_global
from reason_jax.sharding.mesh import data_size, make_mesh
from reason_jax.sharding.rules import ROLLOUT_RULES
from reason_jax.train.policy import Policy, count_params

log = logging.getLogger(__name__)


def decode_flops_per_step(model_cfg, N: int, S: int, T: int) -> float:
    """Matmul FLOPs of one decode step over all N rows: projections, MLP and LM head
    (2 x weights per row) plus attention scores and values over all S + T slots (the kernel
    scores every slot and masks the unfilled ones)."""
    m = model_cfg
    D, F, Q, K, H, V = m.dim, m.mlp_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.vocab_size
    weights = m.num_layers * (D * Q * H * 2 + D * K * H * 2 + 3 * D * F) + D * V
    attn = m.num_layers * 4 * Q * H * (S + T)
    return float(N) * (2 * weights + attn)


def run(args, overrides) -> dict:
    cfg = common.load(args, overrides)
    ro = cfg.rollout
    iters = max(int(getattr(args, "iters", 3) or 1), 1)
    model_cfg, pad_id = common.model_config(cfg)
    mesh = make_mesh(dict(cfg.mesh))
    B, G, T = int(ro.batch_size), int(ro.group_size), int(ro.max_new_tokens)
    N = B * G
    if B % data_size(mesh):
        raise SystemExit(f"rollout.batch_size={B} is not divisible by the mesh's data size "
                         f"{data_size(mesh)}")
    S_prompt = common.prompt_len(cfg)
    S = bucket_length(S_prompt, cfg.data.buckets)
    V = model_cfg.vocab_size

    policy = Policy(model_cfg, mesh)
    params = policy.init_params(cfg.seed)
    rollout_params, reshard_s = policy.to_rollout(params)
    rng = np.random.default_rng(cfg.seed)
    low = 1 if V > 1 else 0
    tokens_BS = rng.integers(low, V, size=(B, S_prompt), dtype=np.int32)
    lengths_B = np.full((B,), S_prompt, np.int32)
    g_tokens, g_lengths = to_global((tokens_BS, lengths_B), mesh)
    top_k = ro.top_k or None
    top_p = ro.top_p if ro.top_p < 1 else None

    def gen(seed):
        return generate((policy.graphdef, rollout_params), g_tokens, g_lengths, group_size=G,
                        max_new_tokens=T, temperature=ro.temperature, top_k=top_k, top_p=top_p,
                        eos_ids=(), seed=seed, pad_id=pad_id, buckets=cfg.data.buckets)

    t0 = time.perf_counter()
    out = common.block(gen(0))
    first_s = time.perf_counter() - t0
    gen_times = []
    for i in range(iters):
        gen_times.append(common.time_call(lambda: gen(1 + i)))
    full_rows = bool(np.all(np.asarray(out.lengths) == T))
    gen_s = float(np.median(gen_times))

    # Prefill alone (same jit boundary as the sampler's first phase).
    graphdef = policy.graphdef
    padded = jnp.pad(g_tokens, ((0, 0), (0, S - S_prompt)), constant_values=pad_id) \
        if S != S_prompt else g_tokens

    @jax.jit
    def prefill(state, tok, lens):
        model = nnx.merge(graphdef, state)
        left, valid, pos = left_align(tok, lens, pad_id)
        logits, (k, v) = model.prefill(left, pos, valid)
        return logits, k, v

    t0 = time.perf_counter()
    common.block(prefill(rollout_params, padded, g_lengths))
    prefill_first_s = time.perf_counter() - t0
    prefill_times = common.repeat_timed(lambda: prefill(rollout_params, padded, g_lengths),
                                        iters)
    prefill_s = float(np.median(prefill_times))
    decode_s = max(gen_s - prefill_s, 1e-9)
    step_s = decode_s / T

    # Roofline bytes per decode step, per device.
    sizes = dict(mesh.shape)
    specs = common.param_specs(policy.abstract_params, policy.axes, ROLLOUT_RULES, sizes)
    params_dev = common.tree_shard_bytes(policy.abstract_params, specs, sizes)
    cache_dtype = jax.tree.leaves(rollout_params)[0].dtype
    kv_avg = common.kv_cache_shard_bytes(model_cfg, B, G, S, T / 2, sizes, cache_dtype)
    kv_full = common.kv_cache_shard_bytes(model_cfg, B, G, S, T, sizes, cache_dtype)
    bytes_step = params_dev + kv_avg["total_bytes"]
    bytes_step_full = params_dev + kv_full["total_bytes"]
    bw = common.measure_bandwidth()
    roofline_step_s = bytes_step / bw["bandwidth_bytes_per_s"]
    # The compute side of the same roofline: with many rows a CPU decode step is FLOP-bound.
    flops_step = decode_flops_per_step(model_cfg, N, S, T) / mesh.size
    mm = common.measure_matmul_peak(model_cfg.dtype)
    compute_step_s = flops_step / mm["matmul_flops_per_s"]

    result = {
        "bench": "sampler",
        **common.device_info(),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "model": {"num_params": count_params(params), "vocab_size": V, "dim": model_cfg.dim,
                  "num_layers": model_cfg.num_layers, "num_heads": model_cfg.num_heads,
                  "num_kv_heads": model_cfg.num_kv_heads, "head_dim": model_cfg.head_dim,
                  "mlp_dim": model_cfg.mlp_dim, "param_dtype": model_cfg.param_dtype,
                  "dtype": model_cfg.dtype},
        "B": B, "G": G, "N": N, "prompt_len": S_prompt, "S": S, "T": T,
        "temperature": float(ro.temperature), "top_k": int(ro.top_k), "top_p": float(ro.top_p),
        "iters": iters,
        "all_rows_full_length": full_rows,
        "generated_tokens": N * T,
        "first_call_s": first_s,
        "generate_s": gen_s,
        "generate_times_s": gen_times,
        "compile_s": max(first_s - gen_s, 0.0),
        "prefill_s": prefill_s,
        "prefill_compile_s": max(prefill_first_s - prefill_s, 0.0),
        "decode_s": decode_s,
        "decode_step_s": step_s,
        "tokens_per_s": N * T / decode_s,
        "end_to_end_tokens_per_s": N * T / gen_s,
        "reshard_train_to_rollout_s": reshard_s,
        "roofline": {
            "params_bytes_per_device": params_dev,
            "kv_prefix_bytes_per_step": kv_avg["prefix_bytes"],
            "kv_decode_bytes_per_step_avg": kv_avg["decode_bytes"],
            "bytes_per_step": bytes_step,
            "bytes_per_step_full_cache": bytes_step_full,
            **bw,
            "roofline_step_s": roofline_step_s,
            "fraction": roofline_step_s / step_s,
            "fraction_full_cache": bytes_step_full / bw["bandwidth_bytes_per_s"] / step_s,
            "flops_per_step_per_device": flops_step,
            **mm,
            "compute_step_s": compute_step_s,
            "compute_fraction": compute_step_s / step_s,
            "bound": "memory" if roofline_step_s >= compute_step_s else "compute",
            "combined_fraction": max(roofline_step_s, compute_step_s) / step_s,
        },
    }
    # Memory-bandwidth roofline (the brief of this bench); see roofline.compute_fraction too.
    result["roofline_fraction"] = result["roofline"]["fraction"]

    if not getattr(args, "no_hf", False):
        from reason_jax.bench import hf_baseline

        hf = hf_baseline.measure(params, model_cfg, tokens_BS, G=G, T=T,
                                 temperature=float(ro.temperature), pad_id=pad_id,
                                 seed=int(cfg.seed), timed_runs=iters)
        result["hf"] = hf
        if hf.get("hf_tokens_per_s"):
            result["hf_tokens_per_s"] = hf["hf_tokens_per_s"]
            result["speedup_vs_hf"] = result["end_to_end_tokens_per_s"] / hf["hf_tokens_per_s"]
    return result
