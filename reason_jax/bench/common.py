"""Shared pieces of the benchmarks: config -> model, device facts, timing, the device's own
memory-bandwidth and matmul peaks (measured in the same process, on the same device), and
per-device byte counts of sharded pytrees computed from shapes and partition specs.
"""

from __future__ import annotations

import math
import os
import platform
import time
import types
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from reason_jax.sharding.rules import partition_spec

# Bench-only knob (cli.py has no flag for it): prompt length S of the synthetic prompts.
# Default: the config's smallest bucket (`data.buckets[0]`).
PROMPT_LEN_ENV = "REASON_JAX_BENCH_PROMPT_LEN"
# Quick calibration (tests): small bandwidth array, small matmul, few repeats. The numbers
# are then only sanity values, not peaks.
QUICK_ENV = "REASON_JAX_BENCH_QUICK"


def quick() -> bool:
    return os.environ.get(QUICK_ENV, "") not in ("", "0", "false", "False")


def load(args, overrides):
    from reason_jax.config.loading import ConfigError, load_config

    try:
        return load_config(getattr(args, "config", None), overrides)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")


def prompt_len(cfg) -> int:
    raw = os.environ.get(PROMPT_LEN_ENV)
    if raw:
        n = int(raw)
        if n < 1:
            raise SystemExit(f"{PROMPT_LEN_ENV}={raw} must be >= 1")
        return n
    return int(sorted(cfg.data.buckets)[0])


def tokenizer_facts(cfg) -> tuple[int, int]:
    """(vocab size, pad id) of the run's tokenizer, as the loop would build it."""
    if cfg.data.task == "countdown" and not cfg.data.tokenizer:
        from reason_jax.data.countdown import countdown_tokenizer

        tok = countdown_tokenizer()
    else:
        from reason_jax.run.task import build_task

        tok = build_task(cfg).tokenizer
    return int(tok.vocab_size), int(tok.pad_id)


def model_config(cfg, *, need_pad: bool = True):
    """(ModelConfig, pad id). The shapes of `model.init_from` / `model.arch` need no tokenizer:
    a dry run plans a pod from a checkpoint's config.json alone (pad id 0 then, when the
    caller does not need it)."""
    from reason_jax.run.policy import model_config_from_run, shapes_known

    if not need_pad and shapes_known(cfg):
        return model_config_from_run(cfg, None), 0
    vocab, pad = tokenizer_facts(cfg)
    return model_config_from_run(cfg, vocab), pad


def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    try:
        import flax

        flax_version = flax.__version__
    except Exception:  # pragma: no cover
        flax_version = None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS)
        cores = os.cpu_count()
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host_cpu_cores": cores,
        "jax_version": jax.__version__,
        "flax_version": flax_version,
        "python": platform.python_version(),
    }


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def block(x):
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def repeat_timed(fn: Callable[[], Any], iters: int) -> list[float]:
    return [time_call(fn) for _ in range(max(int(iters), 1))]




def _calibrate_s(default: float) -> float:
    return 0.02 if quick() else default


def _time_kernel(fn, arg, min_time: float, max_iters: int = 1000) -> float:
    """Best per-call time of `fn(arg)` over repeats filling about `min_time` seconds."""
    block(fn(arg))  # compile + warm
    best = math.inf
    total, n = 0.0, 0
    while (total < min_time or n < 3) and n < max_iters:
        t = time_call(lambda: fn(arg))
        best = min(best, t)
        total += t
        n += 1
    return best


def measure_bandwidth(device=None, nbytes: int | None = None,
                      min_time: float | None = None) -> dict[str, float]:
    """Achievable memory bandwidth of one device, bytes/s: a jitted full reduction (reads the
    array once) and a jitted scale-copy (reads it and writes a same-sized output). The larger
    of the two is what the roofline uses."""
    device = device or jax.devices()[0]
    if nbytes is None:
        nbytes = (256 << 20) if device.platform == "cpu" else (1 << 30)
        nbytes = (16 << 20) if quick() else nbytes
    min_time = _calibrate_s(0.3) if min_time is None else min_time
    n = nbytes // 4
    x = jax.device_put(jnp.arange(n, dtype=jnp.float32), device)
    read = jax.jit(lambda a: jnp.sum(a))
    t_read = _time_kernel(read, x, min_time)
    # Donated and fed back, so the output reuses the input buffer (no fresh pages to fault in).
    copy = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    box = [copy(x)]
    del x
    block(box[0])

    def chained(_):
        box[0] = copy(box[0])
        return box[0]

    t_copy = _time_kernel(chained, None, min_time)
    del box
    bw_read = n * 4 / t_read
    bw_copy = 2 * n * 4 / t_copy
    return {"bandwidth_bytes_per_s": max(bw_read, bw_copy), "read_reduce_bytes_per_s": bw_read,
            "copy_bytes_per_s": bw_copy, "array_bytes": n * 4}


def measure_matmul_peak(dtype: Any = jnp.float32, device=None, n: int | None = None,
                        min_time: float | None = None) -> dict[str, Any]:
    """Achievable matmul FLOP/s of one device in `dtype` (best of repeats of an n x n x n
    jitted matmul; float32 accumulation)."""
    device = device or jax.devices()[0]
    if n is None:
        n = 2048 if device.platform == "cpu" else 8192
        n = 256 if quick() else n
    min_time = _calibrate_s(0.5) if min_time is None else min_time
    dtype = jnp.dtype(dtype)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(k1, (n, n), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(k2, (n, n), jnp.float32).astype(dtype), device)
    mm = jax.jit(lambda x: jnp.matmul(x, b, preferred_element_type=jnp.float32))
    t = _time_kernel(mm, a, min_time)
    return {"matmul_flops_per_s": 2.0 * n ** 3 / t, "matmul_n": n, "matmul_dtype": dtype.name}


# -- per-device bytes from shapes and partition specs ----------------------------------------

def mesh_sizes(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[dict[str, int], bool]:
    """Resolve the config's mesh. Returns (sizes, fits_local): a mesh with no -1 whose size
    differs from the local device count is kept as asked (a slice being sized in advance)."""
    from reason_jax.sharding.mesh import AXES, resolve_sizes

    try:
        return resolve_sizes(dict(mesh_cfg), num_devices), True
    except ValueError:
        sizes = {a: int(dict(mesh_cfg).get(a, 1)) for a in AXES}
        if any(v < 1 for v in sizes.values()):
            raise
        return sizes, False


def fake_mesh(sizes: Mapping[str, int]):
    """What `rules.partition_spec` needs of a mesh (its axis sizes), without devices."""
    return types.SimpleNamespace(shape=dict(sizes))


def _spec_divisor(entry, sizes) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(sizes.get(n, 1) for n in names)


def shard_bytes(shape, dtype, spec, sizes: Mapping[str, int]) -> int:
    """Bytes of one device's shard of an array with `spec` on a mesh of `sizes`."""
    spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
    elems = 1
    for dim, entry in zip(shape, spec):
        elems *= -(-int(dim) // _spec_divisor(entry, sizes))
    return elems * jnp.dtype(dtype).itemsize


def _is_axes_leaf(x):
    return x is None or isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


class _Spec:
    """A partition spec wrapped so pytree utilities treat it as one leaf."""

    def __init__(self, spec):
        self.spec = spec


def param_specs(abstract_params, axes, rules, sizes):
    mesh = fake_mesh(sizes)
    return jax.tree.map(lambda leaf, ax: _Spec(partition_spec(ax, rules, mesh, leaf.shape)),
                        abstract_params, axes, is_leaf=_is_axes_leaf)


def tree_shard_bytes(abstract, specs, sizes) -> int:
    vals = jax.tree.map(lambda a, s: shard_bytes(a.shape, a.dtype, s.spec, sizes), abstract,
                        specs)
    return int(sum(jax.tree.leaves(vals)))


def optimizer_shard_bytes(optimizer, abstract_params, specs, sizes) -> int:
    """Optimizer state per device: moments follow their parameter's spec (as
    `rl.train_state_shardings` places them), everything else is replicated."""
    import optax

    opt_abstract = jax.eval_shape(optimizer.init, abstract_params)
    vals = optax.tree_map_params(
        optimizer,
        lambda leaf, s: shard_bytes(leaf.shape, leaf.dtype, s.spec, sizes),
        opt_abstract, specs,
        transform_non_params=lambda leaf: (int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
                                           if hasattr(leaf, "shape") else 0))
    return int(sum(v for v in jax.tree.leaves(vals) if isinstance(v, (int, np.integer))))


def memory_analysis_dict(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # pragma: no cover (backend without it)
        return None
    if m is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0) or 0) for k in keys}


def cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # pragma: no cover
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    flops = cost.get("flops")
    return float(flops) if flops is not None else None


def peak_device_memory() -> int | None:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return None
