"""`reason-jax bench sampler`: throughput of the fused group sampler in lock-step and with
continuous batching, its decode roofline, and (optionally) the same weights sampled by Hugging
Face transformers on CPU in a separate process.

Sizes: the model from the config's `model` section, B = rollout.batch_size prompts of length
S (data.buckets[0], or $REASON_JAX_BENCH_PROMPT_LEN), G = rollout.group_size samples each,
T = rollout.max_new_tokens, EOS disabled. Without `--lengths` every sample runs all T tokens;
`--lengths SPEC` forces per-sample lengths (`generate(..., max_lengths=...)`), e.g.
`lognormal:median=128,sigma=0.8,max=512` or an explicit list `64,512,128` (repeated to N).

Two modes on the same prompts, seeds and lengths: `lockstep` (R = N slots, every sample
starts at once) and `continuous` (R = --max-rows, default N/4: a finished slot takes the next
sample). Per mode: decode steps, slot utilisation (tokens made by decode steps / (R x steps)),
decode tokens/s, and the decode cache per device (from shapes, plus XLA's own buffer total for
the compiled program). The top-level keys describe the lock-step run.

Timing: the first `generate` call (compile + run) and `--iters` steady calls (median). The
prefill alone (a jitted `model.prefill` on the same prompts) is timed the same way; decode
time = steady generate time - prefill time.

Roofline: a decode step must read every weight once and the KV cache written so far; per
device, bytes/step = rollout-layout parameter bytes + prefix K/V [L,B,S,K,H] x 2 + decode K/V
of N rows x T/2 (the average filled length) x 2. Divided by (time per step x the bandwidth
measured in this run on this device) it is the fraction of the memory roofline reached.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reason_jax.bench import common
from reason_jax.data.bucketing import bucket_length
from reason_jax.run.policy import Policy, count_params
from reason_jax.sampling import generate, memory
from reason_jax.sampling.sampler import left_align, lower_generate
from reason_jax.sharding.host_arrays import to_global
from reason_jax.sharding.mesh import data_size, make_mesh
from reason_jax.sharding.rules import ROLLOUT_RULES

log = logging.getLogger(__name__)


def decode_flops_per_step(model_cfg, N: int, S: int, T: int) -> float:
    """Matmul FLOPs of one decode step over N rows: projections, MLP and LM head
    (2 x weights per row) plus attention scores and values over all S + T slots (the kernel
    scores every slot and masks the unfilled ones)."""
    m = model_cfg
    D, F, Q, K, H, V = m.dim, m.mlp_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.vocab_size
    weights = m.num_layers * (D * Q * H * 2 + D * K * H * 2 + 3 * D * F) + D * V
    attn = m.num_layers * 4 * Q * H * (S + T)
    return float(N) * (2 * weights + attn)


def parse_lengths(spec: str, N: int, T: int, seed: int) -> np.ndarray:
    """Per-sample token limits `[N]` from `lognormal:median=M,sigma=S[,max=X][,min=Y]` (drawn
    with `seed`, rounded, clipped to [min (1), max (T)]) or a comma-separated list of ints
    (repeated to N)."""
    spec = spec.strip()
    if spec.startswith("lognormal:"):
        kv = {}
        for part in spec[len("lognormal:"):].split(","):
            name, _, value = part.partition("=")
            if name.strip() not in ("median", "sigma", "max", "min") or not value:
                raise SystemExit(f"--lengths: bad field {part!r} in {spec!r} (median=, sigma=, "
                                 "max=, min=)")
            kv[name.strip()] = float(value)
        if "median" not in kv or "sigma" not in kv:
            raise SystemExit(f"--lengths {spec!r}: lognormal needs median= and sigma=")
        hi, lo = int(kv.get("max", T)), int(kv.get("min", 1))
        if hi > T:
            raise SystemExit(f"--lengths max={hi} exceeds rollout.max_new_tokens={T}")
        rng = np.random.default_rng(seed)
        draw = rng.lognormal(math.log(kv["median"]), kv["sigma"], size=N)
        return np.clip(np.rint(draw), lo, hi).astype(np.int32)
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--lengths {spec!r}: expected lognormal:... or a list of ints")
    if not values or min(values) < 1 or max(values) > T:
        raise SystemExit(f"--lengths {spec!r}: each length must be in [1, {T}]")
    return np.resize(np.asarray(values, np.int32), N)


def _compiled_temp_bytes(model, g_tokens, g_lengths, **kw) -> int | None:
    """XLA's buffer total (temporaries, per device) of the sampler program `generate(**kw)`
    compiles: the measured side of the decode-cache bytes."""
    try:
        compiled = lower_generate(model, g_tokens, g_lengths, **kw).compile()
    except Exception as e:  # pragma: no cover (backend without memory analysis)
        log.warning("memory analysis failed: %s", e)
        return None
    stats = common.memory_analysis_dict(compiled)
    return None if stats is None else stats["temp_size_in_bytes"]


def _run_mode(gen, iters: int, R: int, prefill_s: float):
    """Time `gen(seed, R)`; returns (the mode's measurements, the first call's output)."""
    t0 = time.perf_counter()
    out = common.block(gen(0, R))
    first_s = time.perf_counter() - t0
    times = [common.time_call(lambda: gen(1 + i, R)) for i in range(iters)]
    gen_s = float(np.median(times))
    lengths = np.asarray(out.lengths)
    steps = int(out.decode_steps)
    decoded = int((lengths - 1).sum())  # tokens drawn by decode steps (first ones by prefill)
    decode_s = max(gen_s - prefill_s, 1e-9)
    return {
        "slots": int(out.num_slots),
        "decode_steps": steps,
        "generated_tokens": int(lengths.sum()),
        # Tokens drawn by decode steps / slot-steps paid (tail phases decode fewer slots).
        "slot_utilisation": decoded / max(int(out.slot_steps), 1),
        "slot_steps": int(out.slot_steps),
        "first_call_s": first_s,
        "compile_s": max(first_s - gen_s, 0.0),
        "generate_s": gen_s,
        "generate_times_s": times,
        "decode_s": decode_s,
        "decode_step_s": decode_s / max(steps, 1),
        "decode_tokens_per_s": int(lengths.sum()) / decode_s,
    }, out


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
    spec = getattr(args, "lengths", None)
    limits = parse_lengths(spec, N, T, int(cfg.seed)) if spec else None
    max_rows = getattr(args, "max_rows", None) or ro.get("max_rows", None) or max(N // 4, 1)

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
    cache_dtype = jax.tree.leaves(rollout_params)[0].dtype

    model = (policy.graphdef, rollout_params)
    kw = dict(group_size=G, max_new_tokens=T, temperature=ro.temperature, top_k=top_k,
              top_p=top_p, eos_ids=(), pad_id=pad_id, buckets=cfg.data.buckets,
              cache_dtype=cache_dtype, max_lengths=limits)

    def gen(seed, R):
        return generate(model, g_tokens, g_lengths, seed=seed, max_rows=R, **kw)

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

    sizes = dict(mesh.shape)
    modes, outs = {}, {}
    for name, R in (("lockstep", N), ("continuous", int(max_rows))):
        m, outs[name] = _run_mode(gen, iters, R, prefill_s)
        cache = memory.kv_cache_bytes(model_cfg, batch_size=B, prompt_len=S,
                                      num_slots=m["slots"], max_new_tokens=T,
                                      data_shards=data_size(mesh),
                                      tensor=sizes.get("tensor", 1), dtype=cache_dtype)
        m["decode_cache_bytes_per_device"] = cache["ring_bytes"]
        m["prefix_cache_bytes_per_device"] = cache["prefix_bytes"]
        m["xla_temp_bytes_per_device"] = _compiled_temp_bytes(model, g_tokens, g_lengths,
                                                              max_rows=R, **kw)
        modes[name] = m
    lock, cont = modes["lockstep"], modes["continuous"]
    lock_out = outs["lockstep"]
    comparison = {
        "decode_tokens_per_s_ratio": cont["decode_tokens_per_s"] / lock["decode_tokens_per_s"],
        "decode_cache_bytes_ratio": cont["decode_cache_bytes_per_device"]
        / lock["decode_cache_bytes_per_device"],
        "slots_ratio": cont["slots"] / lock["slots"],
        # Scheduling does not change what is sampled (same seed): rows whose tokens differ.
        "rows_with_different_tokens": int(np.any(np.asarray(lock_out.tokens)
                                                 != np.asarray(outs["continuous"].tokens),
                                                 axis=1).sum()),
    }

    gen_s, first_s, steps = lock["generate_s"], lock["first_call_s"], lock["decode_steps"]
    generated = lock["generated_tokens"]
    decode_s = lock["decode_s"]
    step_s = lock["decode_step_s"]
    full_rows = bool(np.all(np.asarray(lock_out.lengths) == T))

    # Roofline bytes per decode step, per device.
    specs = common.param_specs(policy.abstract_params, policy.axes, ROLLOUT_RULES, sizes)
    params_dev = common.tree_shard_bytes(policy.abstract_params, specs, sizes)
    kv_full = memory.kv_cache_bytes(model_cfg, batch_size=B, prompt_len=S, num_slots=N,
                                    max_new_tokens=T, data_shards=data_size(mesh),
                                    tensor=sizes.get("tensor", 1), dtype=cache_dtype)
    kv_avg_decode = kv_full["ring_bytes"] / 2
    bytes_step = params_dev + kv_full["prefix_bytes"] + kv_avg_decode
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
        "lengths": spec,
        "length_stats": {"mean": float(np.mean(lock_out.lengths)),
                         "max": int(np.max(lock_out.lengths)),
                         "mean_over_max": float(np.mean(lock_out.lengths)) / T},
        "all_rows_full_length": full_rows,
        "generated_tokens": generated,
        "decode_steps": steps,
        "first_call_s": first_s,
        "generate_s": gen_s,
        "generate_times_s": lock["generate_times_s"],
        "compile_s": lock["compile_s"],
        "prefill_s": prefill_s,
        "prefill_compile_s": max(prefill_first_s - prefill_s, 0.0),
        "decode_s": decode_s,
        "decode_step_s": step_s,
        "tokens_per_s": generated / decode_s,
        "end_to_end_tokens_per_s": generated / gen_s,
        "reshard_train_to_rollout_s": reshard_s,
        "modes": modes,
        "continuous_vs_lockstep": comparison,
        "roofline": {
            "params_bytes_per_device": params_dev,
            "kv_prefix_bytes_per_step": kv_full["prefix_bytes"],
            "kv_decode_bytes_per_step_avg": kv_avg_decode,
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

        if limits is not None:
            result["hf"] = {"skipped": "--lengths: transformers cannot force per-sample lengths"}
        else:
            hf = hf_baseline.measure(params, model_cfg, tokens_BS, G=G, T=T,
                                     temperature=float(ro.temperature), pad_id=pad_id,
                                     seed=int(cfg.seed), timed_runs=iters)
            result["hf"] = hf
            if hf.get("hf_tokens_per_s"):
                result["hf_tokens_per_s"] = hf["hf_tokens_per_s"]
                result["speedup_vs_hf"] = result["end_to_end_tokens_per_s"] / \
                    hf["hf_tokens_per_s"]
    return result
