"""`reason-jax bench verifier`: what the `math` verifier costs, pool and sandbox included.

Workload: N typical answers (some reasoning text with inline math, then a boxed integer or
fraction), as a rollout produces them: N / 16 problems with 16 samples each, about half of
them right. N = $REASON_JAX_BENCH_VERIFIER_N (default 4096).

Measured, wall time and CPU time (this process plus its workers; on a shared machine the
CPU time is the number that does not depend on the neighbours):
* `mathverify_alone_*`: math-verify itself (parse gold, parse prediction, verify) per answer
  on one core, in a separate plain interpreter (this process never imports it);
  `mathverify_gold_once_cpu_ms`: the same with each gold parsed once per problem, as the
  verifier's cache does;
* `worker_start_*`: a cold one-worker pool until its isolated worker is ready (imports,
  warm-up, isolation); `pool_1worker_*`: per answer through that warm pool, so
  `pool_overhead_cpu_ms` = pool_1worker_cpu_ms - mathverify_gold_once_cpu_ms is what the
  bridge, the answer-format scan and the sandbox add per answer;
* `batch_s` / `batch_cpu_s`: the whole batch on a warm pool of `verifier.num_workers`
  workers (median of `--iters`), the wait of a training step, and `batch_s_free_cores`:
  batch_cpu_s spread over min(workers, cpus) cores, what it takes when they are not shared.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time

from reason_jax.verifiers import VerifierPool

N_ENV = "REASON_JAX_BENCH_VERIFIER_N"
ENGINE_MODULES = ("sympy", "math_verify", "latex2sympy2_extended", "mpmath", "antlr4")
_FILLER = ("We need the value of the expression. Let $x$ be the unknown, so $2x + 3 = 11$ "
           "gives $x = 4$. Checking the constraint again, $x^2 - 16 = 0$ holds. ")

# Times math-verify as its users call it; reads [[gold, completion], ...] on stdin.
_ALONE = r"""
import json, logging, sys, time
logging.disable(logging.WARNING)
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
pairs = json.load(sys.stdin)
clocks = (time.perf_counter, time.process_time)
configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
for gold, completion in pairs[-64:]:  # warm, as the verifier's workers are
    verify(parse("\\boxed{" + gold + "}", configs), parse(completion, configs))
t = [c() for c in clocks]
for gold, completion in pairs:
    verify(parse("\\boxed{" + gold + "}", configs), parse(completion, configs))
alone = [(c() - t0) / len(pairs) for c, t0 in zip(clocks, t)]
t = time.process_time()
golds = {g: parse("\\boxed{" + g + "}", configs) for g, _ in pairs}
for gold, completion in pairs:
    verify(golds[gold], parse(completion, configs))
print(json.dumps(alone + [(time.process_time() - t) / len(pairs)]))
"""


def workload(n: int, group: int = 16, seed: int = 0) -> tuple[list[str], list[dict]]:
    """(completions, records): n answers, `group` per problem, about half right."""
    rng = random.Random(seed)
    completions, records = [], []
    for p in range(-(-n // group)):
        if p % 2:
            num, den = rng.randint(1, 99), rng.randint(2, 99)
            gold, shown = f"\\frac{{{num}}}{{{den}}}", (num, den)
        else:
            gold, shown = str(rng.randint(1, 9999)), None
        for _ in range(group):
            right = rng.random() < 0.5
            if shown:
                num, den = shown if right else (shown[0] + rng.randint(1, 9), shown[1])
                answer = f"\\frac{{{num}}}{{{den}}}"
            else:
                answer = gold if right else str(int(gold) + rng.randint(1, 50))
            text = _FILLER * rng.randint(1, 4)
            completions.append(f"{text}Therefore the answer is $\\boxed{{{answer}}}$.")
            records.append({"answer": gold})
    return completions[:n], records[:n]


def _alone_ms(completions, records) -> list[float]:
    """math-verify per answer in ms: [wall, CPU, CPU with each gold parsed once]."""
    pairs = [[r["answer"], c] for c, r in zip(completions, records)]
    out = subprocess.run([sys.executable, "-c", _ALONE], input=json.dumps(pairs), text=True,
                         capture_output=True, check=True)
    return [x * 1e3 for x in json.loads(out.stdout)]


def _cpu_s(pids) -> float:
    """CPU seconds used so far by this process and the live ones of ``pids``."""
    total = time.process_time()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _timed(pool, completions, records, timeout_s):
    """(wall s, CPU s, result) of one score call."""
    pids = pool.worker_pids
    t, c = time.perf_counter(), _cpu_s(pids)
    res = pool.score("math", completions, records, timeout_s=timeout_s)
    return time.perf_counter() - t, _cpu_s(pids) - c, res


def run(args, overrides) -> dict:
    from reason_jax.bench.common import load

    cfg = load(args, overrides)
    # What this process had loaded before (torch, say, imports sympy): the bench reports only
    # engine modules that scoring itself brought in, which must be none.
    preloaded = {m.split(".")[0] for m in sys.modules}
    n = int(os.environ.get(N_ENV, 4096))
    iters = max(int(getattr(args, "iters", 3) or 1), 1)
    workers = int(cfg.verifier.num_workers)
    timeout_s = float(cfg.verifier.timeout_s)
    completions, records = workload(n)
    sample = min(n, 1024)  # the one-core measurements use a prefix of the batch

    alone_ms, alone_cpu_ms, gold_once_cpu_ms = _alone_ms(completions[:sample], records[:sample])
    t = time.perf_counter()
    with VerifierPool(1) as pool:
        caps = pool.isolation("math")
        start_s = time.perf_counter() - t
        start_cpu_s = _cpu_s(pool.worker_pids) - _cpu_s([])
        pool.score("math", completions[:64], records[:64], timeout_s=timeout_s)
        wall, cpu, _ = _timed(pool, completions[:sample], records[:sample], timeout_s)
        one_ms, one_cpu_ms = wall / sample * 1e3, cpu / sample * 1e3

    with VerifierPool(workers) as pool:
        pool.isolation("math")
        pool.score("math", completions, records, timeout_s=timeout_s)  # warm
        runs = [_timed(pool, completions, records, timeout_s) for _ in range(iters)]
    batch_s = statistics.median(r[0] for r in runs)
    batch_cpu_s = statistics.median(r[1] for r in runs)
    res = runs[-1][2]
    return {
        "answers": n, "workers": workers, "cpus": os.cpu_count(),
        "mathverify_alone_ms": alone_ms, "mathverify_alone_cpu_ms": alone_cpu_ms,
        "mathverify_gold_once_cpu_ms": gold_once_cpu_ms,
        "worker_start_s": start_s, "worker_start_cpu_s": start_cpu_s,
        "pool_1worker_ms": one_ms, "pool_1worker_cpu_ms": one_cpu_ms,
        "pool_overhead_cpu_ms": one_cpu_ms - gold_once_cpu_ms,
        "batch_s": batch_s, "batch_cpu_s": batch_cpu_s,
        "batch_s_free_cores": batch_cpu_s / min(workers, os.cpu_count() or 1),
        "answers_per_s": n / batch_s,
        "accuracy": res.status_counts["ok"] / n, "status_counts": res.status_counts,
        "isolation": caps,
        "engine_imported_here": sorted(({m.split(".")[0] for m in sys.modules} - preloaded)
                                        & set(ENGINE_MODULES)),
    }
