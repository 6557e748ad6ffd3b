"""`reason-jax bench train-step`: the jitted RL update on a synthetic rollout batch, and
(`--dry-run`) per-device memory estimates for the config's mesh without running anything.

The policy, optimizer, state shardings and train step are built exactly as `run.loop.Run`
builds them (same functions, same config keys). The batch has N = B*G rows of S prompt +
T response tokens, all valid, every response token in the loss, random advantages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time

import jax
import numpy as np

from reason_jax import rl
from reason_jax.bench import common
from reason_jax.config.resolve import rl_optimizer, step_config
from reason_jax.rl.rollout_batch import bucket_index
from reason_jax.sharding.host_arrays import rows_sharding, to_global
from reason_jax.sharding.mesh import data_size, make_mesh
from reason_jax.sharding.rules import BATCH_AXES, ROLLOUT_RULES, TRAIN_RULES
from reason_jax.run.policy import Policy

log = logging.getLogger(__name__)


def _build(cfg, mesh, model_cfg):
    """Policy, optimizer, state shardings and the jitted step, as `Run.__init__` does."""
    policy = Policy(model_cfg, mesh)
    optimizer = rl_optimizer(cfg)
    state_shardings = rl.train_state_shardings(policy.abstract_params, optimizer,
                                               policy.train_shardings)
    step = rl.make_train_step(policy.apply_fn, optimizer, step_config(cfg),
                              rl.StepShardings(state_shardings, rows_sharding(mesh, 1)))
    return policy, optimizer, state_shardings, step


def _batch_shapes(cfg, N, S, T) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shapes of `synthetic_batch`, without allocating it (dry runs at pod scale)."""
    X = S + T
    shapes = {"tokens_NX": ((N, X), np.int32), "positions_NX": ((N, X), np.int32),
              "valid_NX": ((N, X), np.bool_), "mask_NT": ((N, T), np.float32),
              "adv_N": ((N,), np.float32), "sampler_logp_NT": ((N, T), np.float32)}
    if step_config(cfg).uses_kl:
        shapes["ref_logp_NT"] = ((N, T), np.float32)
    return shapes


def synthetic_batch(cfg, N, S, T, vocab, seed=0, lengths_N=None,
                    data_shards: int = 1) -> dict[str, np.ndarray]:
    """N rows of S prompt + T response tokens; `lengths_N` (default: all T) ends each response
    early, as EOS would. Rows are ordered as the loop orders them (`rl.length_buckets`)."""
    rng = np.random.default_rng(seed)
    X = S + T
    lengths_N = np.full(N, T) if lengths_N is None else np.asarray(lengths_N)
    mask_NT = np.arange(T)[None, :] < lengths_N[:, None]
    batch = {
        "tokens_NX": rng.integers(0, vocab, size=(N, X), dtype=np.int32),
        "positions_NX": np.broadcast_to(np.arange(X, dtype=np.int32), (N, X)).copy(),
        "valid_NX": np.concatenate([np.ones((N, S), bool), mask_NT], 1),
        "mask_NT": mask_NT.astype(np.float32),
        "adv_N": rng.standard_normal(N).astype(np.float32),
        "sampler_logp_NT": (-rng.exponential(1.0, size=(N, T))).astype(np.float32),
    }
    step = step_config(cfg)
    if step.uses_kl:
        batch["ref_logp_NT"] = (-rng.exponential(1.0, size=(N, T))).astype(np.float32)
    if step.length_buckets > 1:
        order = rl.length_grouped_order(lengths_N, num_minibatches=step.num_minibatches,
                                        micro_batches=step.micro_batches,
                                        data_shards=data_shards)
        batch = {k: v[order] for k, v in batch.items()}
    return batch


def padding_fractions(batch, step_cfg, S: int, T: int) -> dict[str, float]:
    """Share of the columns a train step processes that are padding: `before` at full width
    (every row S + T), `after` with the step's micro-batches trimmed to their length bucket."""
    mask_NT = np.asarray(batch["mask_NT"]) > 0
    real = float(np.asarray(batch["valid_NX"]).sum())
    N = mask_NT.shape[0]
    buckets = rl.length_buckets(T, step_cfg.length_buckets)
    last_N = np.where(mask_NT.any(1), T - np.argmax(mask_NT[:, ::-1], axis=1), 0)
    parts = step_cfg.num_minibatches * step_cfg.micro_batches
    columns = 0.0
    for p in range(parts):  # the step's micro-batch p: rows p, p + parts, ... (split_rows)
        rows = last_N[p::parts]
        t = buckets[int(bucket_index(rows.max(), buckets))]
        columns += len(rows) * (S + t)
    return {"before": 1.0 - real / (N * (S + T)), "after": 1.0 - real / columns}


def analytic_flops(model_cfg, cfg, N, S, T) -> float:
    """Matmul FLOPs of one step: forward 2 x (non-embedding params + LM head) per token plus
    attention (full L x L scores, as computed), backward 2x forward, plus one forward when
    old log-probs are recomputed; times ppo_epochs."""
    m, step = model_cfg, step_config(cfg)
    X = S + T
    D, F, Q, K, H, V = m.dim, m.mlp_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.vocab_size
    per_layer = 2 * (D * Q * H * 2 + D * K * H * 2 + 3 * D * F) + 4 * Q * H * X
    fwd_per_token = m.num_layers * per_layer + 2 * D * V
    passes = 3 + (1 if step.recompute_old_logp else 0)
    return float(fwd_per_token) * N * X * passes * step.ppo_epochs


def _sizes(cfg):
    ro = cfg.rollout
    from reason_jax.data.bucketing import bucket_length

    S = bucket_length(common.prompt_len(cfg), cfg.data.buckets)  # the loop pads to the bucket
    return int(ro.batch_size), int(ro.group_size), S, int(ro.max_new_tokens)


def run(args, overrides) -> dict:
    cfg = common.load(args, overrides)
    if getattr(args, "dry_run", False):
        return dry_run(cfg, args, overrides)
    from reason_jax.config.loading import ConfigError, validate

    try:
        validate(cfg, jax.device_count())
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")
    iters = max(int(getattr(args, "iters", 3) or 1), 1)
    model_cfg, _ = common.model_config(cfg)
    mesh = make_mesh(dict(cfg.mesh))
    B, G, S, T = _sizes(cfg)
    N = B * G
    policy, optimizer, state_shardings, step = _build(cfg, mesh, model_cfg)
    params = policy.init_params(cfg.seed)
    num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    state = jax.jit(lambda p: rl.create_train_state(p, optimizer),
                    out_shardings=state_shardings)(params)
    del params
    lengths = None
    if getattr(args, "lengths", None):
        from reason_jax.bench.sampler import parse_lengths

        lengths = parse_lengths(args.lengths, N, T, cfg.seed)
    host_batch = synthetic_batch(cfg, N, S, T, model_cfg.vocab_size, cfg.seed, lengths,
                                 data_size(mesh))
    padding = padding_fractions(host_batch, step_config(cfg), S, T)
    real_tokens = float(host_batch["valid_NX"].sum())
    batch = to_global(host_batch, mesh)

    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    flops_xla = common.cost_flops(compiled)
    mem = common.memory_analysis_dict(compiled)

    t0w = time.perf_counter()
    state, m = compiled(state, batch)
    common.block((state, m))
    warmup_s = time.perf_counter() - t0w
    times = []
    for _ in range(iters):
        t0s = time.perf_counter()
        state, m = compiled(state, batch)
        common.block((state, m))
        times.append(time.perf_counter() - t0s)
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(m).items()
               if np.asarray(v).size == 1}
    step_s = float(np.median(times))

    peak = common.peak_device_memory()
    if peak is not None:
        peak_src = "device memory_stats peak_bytes_in_use"
    elif mem is not None:
        peak = (mem["temp_size_in_bytes"] + mem["argument_size_in_bytes"]
                + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"])
        peak_src = "compiled memory_analysis: temp + argument + output - alias (per device)"
    else:
        peak_src = "unavailable"

    compute_dtype = model_cfg.dtype
    mm = common.measure_matmul_peak(compute_dtype)
    ndev = mesh.size
    peak_flops = mm["matmul_flops_per_s"] * ndev  # the compiled step's FLOPs are per device
    flops_an = analytic_flops(model_cfg, cfg, N, S, T)
    # cost_analysis of an SPMD executable counts one device's partition.
    flops_xla_total = flops_xla * ndev if flops_xla else None
    # XLA's cost analysis counts a while-loop body once, whatever its trip count: with more
    # than one epoch / minibatch / micro-batch (lax.scan loops) it undercounts, so the
    # analytic count is used then.
    step_cfg = step_config(cfg)
    loops = int(step_cfg.ppo_epochs * step_cfg.num_minibatches * step_cfg.micro_batches)
    use_xla = bool(flops_xla_total and flops_xla_total > 0 and loops == 1)
    flops_used = flops_xla_total if use_xla else flops_an
    return {
        "bench": "train-step",
        **common.device_info(),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "model": {"num_params": num_params, **_model_fields(model_cfg)},
        "B": B, "G": G, "N": N, "S": S, "T": T, "X": S + T,
        "rl": {k: cfg.rl[k] for k in ("algo", "ppo_epochs", "num_minibatches", "micro_batches",
                                      "recompute_old_logp", "beta")},
        "iters": iters,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "warmup_step_s": warmup_s,
        "step_s": step_s,
        "step_times_s": times,
        "tokens_per_s": N * (S + T) / step_s,
        "real_tokens_per_s": real_tokens / step_s,
        "lengths": getattr(args, "lengths", None),
        "length_buckets": step_cfg.length_buckets,
        "padding_frac": padding,
        "response_tokens_per_s": N * T / step_s,
        "peak_memory_bytes": peak,
        "peak_memory_source": peak_src,
        "memory_analysis": mem,
        "flops_per_step_xla": flops_xla_total,
        "flops_per_step_analytic": flops_an,
        "flops_source": "xla cost_analysis" if use_xla else "analytic",
        **mm,
        "peak_flops_per_s": peak_flops,
        "achieved_flops_per_s": flops_used / step_s,
        "mfu": flops_used / step_s / peak_flops,
        "mfu_analytic": flops_an / step_s / peak_flops,
        "last_metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
    }


def _model_fields(model_cfg):
    return {"vocab_size": model_cfg.vocab_size, "dim": model_cfg.dim,
            "num_layers": model_cfg.num_layers, "num_heads": model_cfg.num_heads,
            "num_kv_heads": model_cfg.num_kv_heads, "head_dim": model_cfg.head_dim,
            "mlp_dim": model_cfg.mlp_dim, "param_dtype": model_cfg.param_dtype,
            "dtype": model_cfg.dtype, "remat": model_cfg.remat}


def dry_run(cfg, args=None, overrides=()) -> dict:
    """Per-device bytes of parameters, optimizer state, the rollout's KV cache and the train
    step's activations (compiler temporaries) for the config's mesh; nothing is allocated."""
    model_cfg, _ = common.model_config(cfg, need_pad=False)
    sizes, fits = common.mesh_sizes(cfg.mesh, jax.device_count())
    ndev = math.prod(sizes.values())
    B, G, S, T = _sizes(cfg)
    N = B * G
    r = step_config(cfg)
    data = math.prod(sizes[a] for a in BATCH_AXES)
    problems = []
    if B % data:
        problems.append(f"rollout.batch_size={B} is not divisible by the data size {data}")
    mb = N // max(r.num_minibatches, 1)
    if mb % max(r.micro_batches, 1) or (mb // max(r.micro_batches, 1)) % data:
        problems.append(f"a micro-batch of N/(num_minibatches*micro_batches) rows is not "
                        f"divisible by the data size {data}")

    # Shapes, logical axes and the optimizer without any device mesh.
    from flax import nnx

    from reason_jax.models.transformer import Transformer, logical_axes

    abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
    _, abstract_state = nnx.split(abstract)
    abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                   abstract_state.to_pure_dict())
    axes = logical_axes(abstract_state).to_pure_dict()
    num_params = int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params)))
    train_specs = common.param_specs(abstract_params, axes, TRAIN_RULES, sizes)
    rollout_specs = common.param_specs(abstract_params, axes, ROLLOUT_RULES, sizes)
    optimizer = rl_optimizer(cfg)
    params_b = common.tree_shard_bytes(abstract_params, train_specs, sizes)
    rollout_params_b = common.tree_shard_bytes(abstract_params, rollout_specs, sizes)
    opt_b = common.optimizer_shard_bytes(optimizer, abstract_params, train_specs, sizes)
    kv, R = _rollout_cache(cfg, model_cfg, B, G, S, T, sizes)
    # Gradients are accumulated in float32, sharded like the parameters.
    grads_b = common.tree_shard_bytes(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, np.float32), abstract_params),
        train_specs, sizes)

    act, act_method, mem = None, None, None
    if not problems:
        child = None if fits else _emulated_compile(args, list(overrides), ndev)
        if child is not None and child.get("per_device", {}).get("activations_bytes"):
            act = child["per_device"]["activations_bytes"]
            mem = child.get("memory_analysis")
            act_method = (f"memory_analysis().temp_size_in_bytes of the train step compiled "
                          f"(not run) for the mesh on {ndev} emulated CPU devices in a child "
                          f"process (XLA CPU buffer assignment)")
        else:
            act, act_method, mem = _activation_bytes(cfg, model_cfg, sizes, fits, N, S, T)
    per_device = {
        "params_bytes": params_b,
        "optimizer_bytes": opt_b,
        "grad_accum_bytes": grads_b,
        "rollout_params_bytes": rollout_params_b,
        "kv_cache_bytes": kv["total_bytes"],
        "kv_cache_prefix_bytes": kv["prefix_bytes"],
        "kv_cache_decode_bytes": kv["ring_bytes"],
        "kv_cache_lock_step_bytes": kv["lock_step_bytes"],
        "activations_bytes": act,
    }
    # Rollout runs while the train state (params + optimizer) stays resident.
    per_device["rollout_phase_bytes"] = params_b + opt_b + rollout_params_b + kv["total_bytes"]
    if act is not None:
        per_device["train_phase_bytes"] = params_b + opt_b + act
    return {
        "bench": "train-step",
        "dry_run": True,
        **common.device_info(),
        "mesh": sizes,
        "mesh_devices": ndev,
        "mesh_fits_local_devices": fits,
        "model": {"num_params": num_params, **_model_fields(model_cfg)},
        "B": B, "G": G, "N": N, "S": S, "T": T, "R": R,
        "rows_per_device": N // data if N % data == 0 else N / data,
        "per_device": per_device,
        "per_device_gib": {k: (v / 2 ** 30 if v is not None else None)
                           for k, v in per_device.items()},
        "activations_method": act_method,
        "memory_analysis": mem,
        "problems": problems,
    }


def _rollout_cache(cfg, model_cfg, B, G, S, T, sizes):
    """(per-device decode-cache bytes, R) with R resolved from `rollout.max_rows` /
    `rollout.kv_cache_gb` exactly as the sampler resolves it; also the lock-step (R = N) size
    for comparison."""
    from reason_jax.sampling import memory
    from reason_jax.sharding.rules import BATCH_AXES

    P = math.prod(sizes.get(a, 1) for a in BATCH_AXES)
    tensor = sizes.get("tensor", 1)
    shape = dict(batch_size=B, prompt_len=S, max_new_tokens=T, data_shards=P, tensor=tensor,
                 dtype=model_cfg.dtype)
    ro = cfg.rollout
    budget = None
    if ro.kv_cache_gb:
        budget = memory.slots_for_kv_budget(model_cfg, ro.kv_cache_gb, group_size=G, **shape)
    R = memory.resolve_num_slots(B * G, data_shards=P, max_rows=ro.max_rows or None,
                                 budget_rows=budget)
    kv = memory.kv_cache_bytes(model_cfg, num_slots=R, **shape)
    kv["lock_step_bytes"] = memory.kv_cache_bytes(model_cfg, num_slots=B * G, **shape)[
        "total_bytes"]
    return kv, R


def _abstract_inputs(cfg, policy, optimizer, state_shardings, mesh, N, S, T):
    abstract_state = jax.eval_shape(lambda p: rl.create_train_state(p, optimizer),
                                    policy.abstract_params)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state,
        state_shardings)
    batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=rows_sharding(mesh, len(shape)))
             for k, (shape, dt) in _batch_shapes(cfg, N, S, T).items()}
    return abstract_state, batch


SUBPROCESS_ENV = "REASON_JAX_BENCH_DRY_RUN_SUBPROCESS"  # "0": never emulate a bigger mesh
_CHILD_ENV = "REASON_JAX_BENCH_DRY_RUN_CHILD"
_MAX_EMULATED = 1024


def _emulated_compile(args, overrides, ndev):
    """Run this dry run again in a child process whose CPU backend has `ndev` emulated devices,
    so the train step is compiled (never run) for exactly the config's mesh. Returns the
    child's result dict, or None when that is off, impossible or failed."""
    if os.environ.get(SUBPROCESS_ENV, "1") in ("0", "false", "False") or \
            os.environ.get(_CHILD_ENV) or ndev > _MAX_EMULATED:
        return None
    cmd = [sys.executable, "-m", "reason_jax", "bench", "train-step", "--dry-run"]
    if getattr(args, "config", None):
        cmd += ["--config", args.config]
    cmd += [f"--config.{o}" for o in overrides]
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={ndev}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[_CHILD_ENV] = "1"
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=float(os.environ.get("REASON_JAX_BENCH_DRY_RUN_TIMEOUT_S",
                                                           "1800")))
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("dry run on %d emulated devices failed: %s", ndev, e)
        return None
    if proc.returncode != 0:
        log.warning("dry run on %d emulated devices failed:\n%s", ndev, proc.stderr[-2000:])
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _activation_bytes(cfg, model_cfg, sizes, fits, N, S, T):
    """Compiler temporaries of the train step (per device), from memory_analysis()."""
    if fits:
        mesh = make_mesh(sizes)
        rows = N
        method = "memory_analysis().temp_size_in_bytes of the train step compiled for the mesh"
    else:
        # The mesh is bigger than this host: compile one device's share of the rows on one
        # device (tensor-parallel splitting of activations is not modelled: an upper bound).
        data = math.prod(sizes[a] for a in BATCH_AXES)
        rows = N // data
        mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
        method = ("memory_analysis().temp_size_in_bytes of one device's rows (N/data) "
                  "compiled on one local device; includes full-size float32 gradient "
                  "accumulators and ignores tensor sharding (upper bound)")
    policy, optimizer, state_shardings, step = _build(cfg, mesh, model_cfg)
    state, batch = _abstract_inputs(cfg, policy, optimizer, state_shardings, mesh, rows, S, T)
    compiled = step.lower(state, batch).compile()
    mem = common.memory_analysis_dict(compiled)
    if mem is None:
        return None, "unavailable (backend has no memory_analysis)", None
    return mem["temp_size_in_bytes"], method, mem
