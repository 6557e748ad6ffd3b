"""Benchmarks behind `reason-jax bench {sampler,train-step,rl-step,verifier}`
(docs/benchmarks.md; `verifier`: docs/verifiers.md).

Each returns one JSON-serialisable dict; the CLI prints it. Bench-only knobs without a CLI
flag are environment variables: REASON_JAX_BENCH_PROMPT_LEN (prompt length S; default
`data.buckets[0]`) and REASON_JAX_BENCH_QUICK=1 (tiny, short calibration kernels: for tests only).
"""

from __future__ import annotations

import math
from typing import Any

WHATS = ("sampler", "train-step", "rl-step", "verifier")


def run(what: str, args, overrides) -> dict[str, Any]:
    overrides = list(overrides or ())
    if what == "sampler":
        from reason_jax.bench.sampler import run as fn
    elif what == "train-step":
        from reason_jax.bench.train_step import run as fn
    elif what == "rl-step":
        from reason_jax.bench.rl_step import run as fn
    elif what == "verifier":
        from reason_jax.bench.verifier import run as fn
    else:
        raise SystemExit(f"unknown bench {what!r}; one of {', '.join(WHATS)}")
    return _jsonable(fn(args, overrides))


def _jsonable(x):
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if hasattr(x, "item") and getattr(x, "size", 1) == 1:
        x = x.item()
        if isinstance(x, (bool, int)):
            return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:
        f = float(x)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return str(x)
