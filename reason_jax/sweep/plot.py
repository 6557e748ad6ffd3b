"""`sweep.png`: held-out pass@1 per variant with its interval, and training curves overlaid.

Panel 1: per variant, each seed's end pass@1 (dots), their mean with the 95% Student t
interval (bar), and the mean start pass@1 (checkpoint 0, hollow diamond): the RL gain at a
glance. Then one panel per curve (report.CURVES present in the runs' metrics.jsonl): every
seed thin, the mean over seeds thick, one colour per variant. Per-step training metrics are
noisy, so their mean is smoothed with a trailing moving average over ~1/25 of the run;
held-out eval points are drawn as they are. Needs matplotlib (a declared dependency), Agg
canvas only.
"""

from __future__ import annotations

import io
import math
import statistics

from reason_jax import paths
from reason_jax.observe.plots import series


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _mean_curve(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """Mean over runs at every step that any run has (runs of one variant share steps)."""
    by_step: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys):
            by_step.setdefault(x, []).append(y)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def _run_rows(sweep):
    from reason_jax.observe.metrics import read_metrics

    rows = {}
    for run in sweep.runs:
        try:
            rows[run.index] = read_metrics(paths.join(run.workdir, "metrics.jsonl"))
        except FileNotFoundError:
            rows[run.index] = []
    return rows


def plot_sweep(sweep, table, out_path) -> bool:
    """Draw sweep.png; False (nothing written) when there is nothing to draw yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from reason_jax.sweep.report import CURVES, mean_ci

    variants = list(dict.fromkeys(r.variant for r in sweep.runs))
    rows = _run_rows(sweep)
    curves = [key for key in CURVES
              if any(series(rows[r.index], key)[0] for r in sweep.runs)]
    if not any(table.get(v) for v in variants) and not curves:
        return False
    n_panels = 1 + len(curves)
    cols = min(n_panels, 3)
    nrows = math.ceil(n_panels / cols)
    legend_rows = len(variants) if len(variants) > 4 else 1
    legend_in = 0.22 * legend_rows + 0.3  # inches below the panels for the legend
    height = 4.0 * nrows + legend_in
    fig = Figure(figsize=(5.2 * cols, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).reshape(-1)
    colours = [f"C{i % 10}" for i in range(len(variants))]

    ax = axes[0]
    for i, (variant, colour) in enumerate(zip(variants, colours)):
        seeds = table.get(variant, {})
        ends = [v["pass@1"] for v in seeds.values()]
        starts = [v["start_pass@1"] for v in seeds.values() if "start_pass@1" in v]
        if not ends:
            continue
        ax.scatter([i] * len(ends), ends, color=colour, s=14, alpha=0.6, zorder=3)
        mean, lo, hi = mean_ci(ends)
        err = None if math.isnan(lo) else [[mean - lo], [hi - mean]]
        ax.errorbar([i], [mean], yerr=err, fmt="o", color=colour, capsize=5, markersize=7,
                    zorder=4)
        if starts:
            ax.scatter([i], [statistics.fmean(starts)], marker="D", facecolors="none",
                       edgecolors=colour, s=40, zorder=4)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([str(i) for i in range(len(variants))])
    ax.set_xlabel("variant (legend below)")
    ax.set_title("held-out pass@1: seeds, mean, 95% CI; \u25c7 start", fontsize=10)
    ax.grid(alpha=0.3)

    for ax, key in zip(axes[1:], curves):
        smooth = not key.startswith("eval/")
        for variant, colour in zip(variants, colours):
            runs = [series(rows[r.index], key) for r in sweep.runs if r.variant == variant]
            runs = [(xs, ys) for xs, ys in runs if xs]
            if not runs:
                continue
            for xs, ys in runs:
                ax.plot(xs, ys, color=colour, linewidth=0.6, alpha=0.25)
            xs, ys = _mean_curve(runs)
            if smooth:
                ys = _moving_average(ys, max(1, len(ys) // 25))
            ax.plot(xs, ys, color=colour, linewidth=1.8, marker=None if smooth else "o",
                    markersize=3)
        ax.set_title(key + (" (mean over seeds, smoothed)" if smooth else " (mean over seeds)"),
                     fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    for ax in axes[n_panels:]:
        ax.set_visible(False)

    handles = [axes[0].plot([], [], color=c, linewidth=3)[0] for c in colours]
    fig.legend(handles, [f"{i}: {v}" for i, v in enumerate(variants)], loc="lower center",
               ncol=1 if legend_rows > 1 else len(variants), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    paths.write_bytes_atomic(out_path, buf.getvalue())
    return True
