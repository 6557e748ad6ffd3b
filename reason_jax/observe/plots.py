"""`curves.png`: the curves worth a glance, one panel each, from metrics rows.

A panel is one metric or a tuple of metrics drawn together: train accuracy and held-out
pass@1 share one, so the generalisation gap is visible while the run trains. Needs matplotlib
(imported lazily, Agg canvas, no pyplot global state). The image is replaced atomically (local
or gs://), so a viewer never sees half a file.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reason_jax import paths

Panel = str | tuple[str, ...]

# The curves that tell at a glance whether an RL run is healthy; missing keys are skipped.
DEFAULT_PANELS: tuple[Panel, ...] = (
    "reward/mean", ("accuracy", "eval/pass@1"), "response_length/mean", "entropy",
    ("clip_frac/low", "clip_frac/high"), "mismatch/abs_logp_diff", "eval/pass@k")


def panel_keys(panels: Sequence[Panel]) -> tuple[str, ...]:
    return tuple(k for p in panels for k in ((p,) if isinstance(p, str) else p))


def series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key`, skipping rows without a numeric value."""
    xs, ys = [], []
    for row in rows:
        value, step = row.get(key), row.get("step")
        if step is None or value is None or isinstance(value, (str, list, dict)):
            continue
        try:
            xs.append(float(step))
            ys.append(float(value))
        except (TypeError, ValueError):
            continue
    return xs, ys


def plot_curves(rows: Sequence[Mapping[str, Any]], out_path,
                panels: Sequence[Panel] = DEFAULT_PANELS, *, title: str | None = None) -> bool:
    """Plot each panel present in `rows` against `step` into a PNG grid at `out_path`.

    Returns False (writing nothing) when no panel has data. Raises ImportError when
    matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = []
    for panel in panels:
        keys = (panel,) if isinstance(panel, str) else tuple(panel)
        lines = [(k, *series(rows, k)) for k in keys]
        lines = [(k, xs, ys) for k, xs, ys in lines if xs]
        if lines:
            drawn.append((" / ".join(k for k, _, _ in lines), lines))
    if not drawn:
        return False
    ncols = min(3, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, lines) in zip(axes, drawn):
        for key, xs, ys in lines:
            # Points matter for sparse series (eval every N steps); lines for dense ones.
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3,
                    linewidth=1.2, label=key)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(drawn):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    paths.write_bytes_atomic(out_path, buf.getvalue())
    return True
