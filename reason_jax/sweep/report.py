"""A sweep's results: per variant the mean and 95% interval over seeds of the held-out metrics,
the per-seed values, `results.md`, `results.csv` and `sweep.png`.

Per run, from `eval.json` (the end of RL) and `eval-0.json` (checkpoint 0: the SFT result RL
starts from): pass@1, pass@k, maj@k, greedy accuracy, the start's pass@1 and the RL gain
(end pass@1 - start pass@1). Across the n seeds of a variant: the mean and the two-sided 95%
Student t interval, mean +- t_{0.975, n-1} s / sqrt(n) with s the sample standard deviation
(n - 1 in the denominator). One seed has no interval (blank). The seeds' SFT cold starts
differ too, so the interval covers the whole pipeline's seed-to-seed spread.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from reason_jax import paths
from reason_jax.sweep.runner import END_EVAL, START_EVAL, Sweep, read_json

RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
SWEEP_PNG = "sweep.png"
# Training curves drawn per variant (those present in the runs' metrics.jsonl).
CURVES = ("accuracy", "reward/mean", "entropy", "eval/pass@1")


# ------------------------------------------------------------------------------- the maths


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer `df` >= 1, in closed form (Abramowitz & Stegun
    26.7.3-4: a finite series in cos^2 of theta = atan(t / sqrt(df)))."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), df/2 terms
        term = total = 1.0
        for j in range(1, df // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            total += term
        return s * total
    # 2/pi * (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...)), (df-1)/2 terms
    term = total = 0.0
    if df > 1:
        term = total = 1.0
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
    return 2.0 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(level: float, df: int) -> float:
    """t such that P(|T| <= t) = level (t_{(1+level)/2, df}), by bisection on the exact mass:
    level 0.95 -> 12.706 (df 1), 4.303 (2), 3.182 (3), 2.776 (4), 2.262 (9)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < level:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_mass(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student t interval over the values; low = high = nan for one
    value (no spread to estimate)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(level, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------- collecting


def run_values(start: Mapping[str, Any] | None, end: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one run from its eval files (names as in results.csv)."""
    out = {"pass@1": float(end["pass@1"])}
    k = end.get("k")
    for name in (f"pass@{k}", f"maj@{k}"):
        if k and k != 1 and end.get(name) is not None:
            out[name] = float(end[name])
    if end.get("greedy_accuracy") is not None:
        out["greedy"] = float(end["greedy_accuracy"])
    if start is not None and start.get("pass@1") is not None:
        out["start_pass@1"] = float(start["pass@1"])
        out["gain_pass@1"] = out["pass@1"] - out["start_pass@1"]
        # RLVR tends to trade pass@k for pass@1: the change of pass@k says what RL cost.
        name = f"pass@{k}"
        if k and k != 1 and name in out and start.get(name) is not None:
            out[f"start_{name}"] = float(start[name])
            out[f"gain_{name}"] = out[name] - out[f"start_{name}"]
    return out


def collect(sweep: Sweep) -> tuple[dict[str, dict[int, dict[str, float]]], list[str]]:
    """-> ({variant: {seed: values}}, notes on runs left out): a run counts once its end
    eval is of its final step."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    missing = []
    for run in sweep.runs:
        table.setdefault(run.variant, {})
        end = read_json(paths.join(run.workdir, END_EVAL))
        if end is None or end.get("step") != sweep.steps[run.index]:
            missing.append(f"{run.name}: no eval.json of step {sweep.steps[run.index]} yet")
            continue
        start = read_json(paths.join(run.workdir, START_EVAL))
        if start is None:
            missing.append(f"{run.name}: no eval-0.json (the RL gain is left out)")
        table[run.variant][run.seed] = run_values(start, end)
    return table, missing


def metric_names(table) -> list[str]:
    """Metrics in a fixed order: end metrics, then the start and the gain."""
    seen = {m for seeds in table.values() for values in seeds.values() for m in values}
    first = ["pass@1"] + sorted(m for m in seen if m.startswith("pass@") and m != "pass@1")
    first += sorted(m for m in seen if m.startswith("maj@"))
    first = [m for m in first if m in seen]
    rest = [m for m in ("greedy", "start_pass@1", "gain_pass@1") if m in seen]
    rest += sorted(m for m in seen if m.startswith("start_pass@") and m != "start_pass@1")
    rest += sorted(m for m in seen if m.startswith("gain_pass@") and m != "gain_pass@1")
    return first + rest


# ------------------------------------------------------------------------------- writing


def results_csv(sweep: Sweep, table) -> str:
    """One row per variant and metric: grid values, n, mean, ci_low, ci_high, and one column
    per seed (`seed=S`, empty where that run has no value)."""
    keys = [k for k, _ in sweep.grid]
    seed_cols = [f"seed={s}" for s in sweep.seeds]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", *keys, "metric", "n", "mean", "ci_low", "ci_high", *seed_cols])
    variants = dict.fromkeys(r.variant for r in sweep.runs)
    grid_values = {r.variant: dict(r.values) for r in sweep.runs}
    for variant in variants:
        seeds = table.get(variant, {})
        for metric in metric_names(table):
            per_seed = {s: v[metric] for s, v in seeds.items() if metric in v}
            if not per_seed:
                continue
            mean, lo, hi = mean_ci(list(per_seed.values()))
            writer.writerow([variant, *(grid_values[variant][k] for k in keys), metric,
                             len(per_seed), _num(mean), _num(lo), _num(hi),
                             *(_num(per_seed[s]) if s in per_seed else "" for s in
                               sweep.seeds)])
    return buf.getvalue()


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _cell(values: Sequence[float]) -> str:
    mean, lo, hi = mean_ci(values)
    return f"{mean:.3f}" if math.isnan(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _grid_text(grid) -> str:
    axes = ["`{}` in {{{}}}".format(key, ", ".join(values)) for key, values in grid]
    return ", ".join(axes) or "none"


def _title(metric: str) -> str:
    """Column heading: `start_pass@8` -> "start pass@8", `gain_pass@1` -> "RL gain (pass@1)",
    `gain_pass@8` -> "RL change (pass@8)" (pass@k may fall)."""
    if metric == "gain_pass@1":
        return "RL gain (pass@1)"
    if metric.startswith("gain_"):
        return f"RL change ({metric[len('gain_'):]})"
    return metric.replace("start_", "start ")


def results_md(sweep: Sweep, table, missing: list[str]) -> str:
    metrics = metric_names(table)
    head = [_title(m) for m in metrics]
    lines = [
        "# Sweep results", "",
        f"Config: `{sweep.config or '(built-in recipe)'}`"
        + (f", for every run: `{' '.join('--config.' + o for o in sweep.common)}`"
           if sweep.common else "") + ".",
        f"Grid: {_grid_text(sweep.grid)}; seeds: {', '.join(map(str, sweep.seeds))}.", "",
        "Held-out eval at the end of RL (`eval.json`); start = checkpoint 0, the SFT result RL "
        "starts from (`eval-0.json`); RL gain = end pass@1 - start pass@1 (likewise the change "
        "of pass@k). Each cell: mean "
        "[95% interval] over the n seeds (Student t, n - 1 degrees of freedom).", "",
        "| variant | n | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(head),
    ]
    variants = list(dict.fromkeys(r.variant for r in sweep.runs))
    for variant in variants:
        seeds = table.get(variant, {})
        cells = []
        for m in metrics:
            vals = [v[m] for v in seeds.values() if m in v]
            cells.append(_cell(vals) if vals else "-")
        lines.append(f"| {variant} | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", "", "| variant | seed | " + " | ".join(head) + " |",
              "|---|---|" + "---|" * len(head)]
    for variant in variants:
        for seed, values in sorted(table.get(variant, {}).items()):
            cells = [f"{values[m]:.4f}" if m in values else "-" for m in metrics]
            lines.append(f"| {variant} | {seed} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "## Not in the table yet", "",
                  *(f"- {m}" for m in missing),
                  "", "Run the same `reason-jax sweep` command again to finish them."]
    return "\n".join(lines) + "\n"


def write_report(sweep: Sweep) -> dict[str, Any]:
    """results.md, results.csv and sweep.png in the sweep's root -> a short summary."""
    from reason_jax.sweep.plot import plot_sweep

    table, missing = collect(sweep)
    root = sweep.root
    paths.write_text_atomic(paths.join(root, RESULTS_MD), results_md(sweep, table, missing))
    paths.write_text_atomic(paths.join(root, RESULTS_CSV), results_csv(sweep, table))
    plotted = plot_sweep(sweep, table, paths.join(root, SWEEP_PNG))
    return {"results": paths.join(root, RESULTS_MD), "csv": paths.join(root, RESULTS_CSV),
            "plot": paths.join(root, SWEEP_PNG) if plotted else None,
            "runs_in_table": sum(len(s) for s in table.values()), "missing": missing}
