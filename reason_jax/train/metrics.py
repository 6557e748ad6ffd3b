"""Training metrics on disk: `metrics.jsonl`, TensorBoard scalars and a `curves.png` overview.

`MetricsWriter` is the one sink the training loop talks to:

  * `WORKDIR/metrics.jsonl`: one JSON object per `write`, always with `step`. This is the
    record of truth: greppable, loadable with `read_metrics` or `pandas.read_json(...,
    lines=True)`. JSON has no NaN/Infinity, so non-finite floats are written as `null`
    (readers see None); anything else would make the file unparsable by strict readers.
  * `WORKDIR/tb/`: the same scalars as TensorBoard events (see `tensorboard.py`).
  * `WORKDIR/curves.png`: a grid of the curves worth glancing at (reward, accuracy, response
    length, entropy, clip fractions, eval pass@1), rewritten every `plot_every` writes and on
    `close`, atomically, so a viewer or `gsutil cp` never sees a half-written image. Needs
    matplotlib (imported lazily, Agg canvas, no pyplot global state); without it plotting is
    skipped with one warning.

Only one process should write (pass `enabled=jax.process_index() == 0`); disabled writers
accept every call and do nothing. Plotting or TensorBoard failures are logged, never raised:
losing a picture must not kill a training run.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reason_jax.train.tensorboard import EventWriter

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PLOT_KEYS", "MetricsWriter", "plot_curves", "read_metrics", "to_jsonable"]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TB_DIR = "tb"

# The curves that tell at a glance whether an RL run is healthy; missing keys are skipped.
DEFAULT_PLOT_KEYS: tuple[str, ...] = (
    "reward/mean", "accuracy", "response_length/mean", "entropy", "clip_frac/low",
    "clip_frac/high", "eval/pass@1")


def _plain(value: Any) -> Any:
    """numpy/jax scalars (and 0-d or single-element arrays) to Python int/float/bool, larger
    arrays to (nested) lists, containers element-wise; non-finite floats are kept."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    # Duck-typed so this module never imports jax (numpy scalars also have tolist and dtype).
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        if getattr(value, "size", None) == 1 and hasattr(value, "reshape"):
            return _plain(value.reshape(()).item())
        return _plain(value.tolist())
    if hasattr(value, "item"):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def to_jsonable(value: Any) -> Any:
    """Convert a metric value to plain JSON types.

    Python and numpy/jax scalars (and 0-d or single-element arrays) become int/float/bool;
    non-finite floats become None (JSON has no NaN); larger arrays become (nested) lists;
    mappings and sequences are converted element-wise; anything else becomes its `str`.
    """
    return _finite_or_none(_plain(value))


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (or of `path/metrics.jsonl` for a work directory).

    Blank and unparsable lines are skipped with a warning: a process killed mid-write leaves a
    partial last line, which must not make the whole history unreadable.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping unparsable line", path, lineno)
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _atomic_write_bytes(path: str, data: bytes) -> None:
    # The temporary file lives in the destination directory so os.replace is a same-filesystem
    # rename, which is atomic on POSIX.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
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


def plot_curves(rows: Sequence[Mapping[str, Any]], out_path: str,
                keys: Sequence[str] = DEFAULT_PLOT_KEYS, *, title: str | None = None) -> bool:
    """Plot each of `keys` present in `rows` against `step` into a PNG grid at `out_path`.

    The file is replaced atomically. Returns False (writing nothing) when none of the keys has
    data. Raises ImportError when matplotlib is not installed.
    """
    # Figure + Agg canvas directly instead of pyplot: no global backend switch, no figure
    # registry to leak, and safe in a process that has already chosen another backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [(k, *_series(rows, k)) for k in keys]
    series = [(k, xs, ys) for k, xs, ys in series if xs]
    if not series:
        return False
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, xs, ys) in zip(axes, series):
        # Points matter for sparse series (eval every N steps); lines for dense ones.
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write_bytes(out_path, buf.getvalue())
    return True


class MetricsWriter:
    """Appends metrics to `workdir/metrics.jsonl`, mirrors them to TensorBoard and keeps
    `workdir/curves.png` current.

    Args:
      workdir: run directory (created if needed).
      enabled: False on every process but one (e.g. `jax.process_index() == 0`).
      tensorboard: also write `workdir/tb/events.out.tfevents.*`.
      plot_every: rewrite curves.png every this many `write` calls (0 disables periodic
        plots; `close` still plots).
      plot_keys: the metrics to plot (missing ones are skipped).

    Existing rows of metrics.jsonl (a resumed run) are kept and included in the plots; call
    `truncate_after(checkpoint_step)` at resume so recomputed steps are not duplicated.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
                 plot_every: int = 10, plot_keys: Sequence[str] = DEFAULT_PLOT_KEYS):
        self.workdir = workdir
        self.enabled = enabled
        self.plot_every = plot_every
        self.plot_keys = tuple(plot_keys)
        self.path = os.path.join(workdir, METRICS_FILE)
        self.curves_path = os.path.join(workdir, CURVES_FILE)
        self._file = None
        self._tb: EventWriter | None = None
        self._plot_rows: list[dict[str, Any]] = []  # only step + plot keys, for memory
        self._writes_since_plot = 0
        self._can_plot = True
        self._closed = False
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):
            self._drop_partial_last_line()
            self._plot_rows = [self._plot_row(r) for r in read_metrics(self.path)]
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                self._tb = EventWriter(os.path.join(workdir, TB_DIR))
            except OSError as e:
                log.warning("TensorBoard logging disabled: %s", e)

    def _plot_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("step", *self.plot_keys) if k in row}

    def _drop_partial_last_line(self) -> None:
        # A kill mid-write leaves a line without "\n"; appending after it would glue the next
        # row onto it and corrupt both, so cut it off.
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping partial last line (%d bytes)", self.path, size - keep)
            f.truncate(keep)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` at `step`: one JSON line, TensorBoard scalars, maybe a new plot."""
        if not self.enabled:
            return
        if self._closed:
            raise ValueError("MetricsWriter is closed")
        step = int(step)
        plain = {str(k): _plain(v) for k, v in metrics.items() if k != "step"}
        row: dict[str, Any] = {"step": step, **_finite_or_none(plain)}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            try:
                # From `plain`, not `row`: TensorBoard can show NaN/inf, which is worth seeing.
                self._tb.scalars(step, {k: v for k, v in plain.items()
                                        if isinstance(v, (int, float))})
                self._tb.flush()
            except Exception as e:  # noqa: BLE001 - logging must not kill training
                log.warning("TensorBoard write failed, disabling it: %s", e)
                self._tb = None
        self._plot_rows.append(self._plot_row(row))
        self._writes_since_plot += 1
        if self.plot_every and self._writes_since_plot >= self.plot_every:
            self.plot()

    def plot(self) -> None:
        """Rewrite curves.png now (errors are logged, not raised)."""
        if not self.enabled or not self._can_plot:
            return
        self._writes_since_plot = 0
        try:
            plot_curves(self._plot_rows, self.curves_path, self.plot_keys)
        except ImportError:
            log.warning("matplotlib is not installed; %s will not be written", CURVES_FILE)
            self._can_plot = False
        except Exception as e:  # noqa: BLE001
            log.warning("plotting %s failed: %s", self.curves_path, e)

    def truncate_after(self, step: int) -> int:
        """Drop rows with `step` > the given step (about to be recomputed after a resume).

        The file is rewritten atomically; TensorBoard is told the session restarted at
        `step + 1` so it discards its stale points too. Returns the number of rows dropped.
        """
        if not self.enabled:
            return 0
        step = int(step)
        self._file.close()
        try:
            rows, dropped = [], 0
            with open(self.path, encoding="utf-8") as f:
                lines = f.readlines()
            for line in lines:
                if not line.strip():
                    continue
                try:
                    row_step = json.loads(line).get("step")
                except (json.JSONDecodeError, AttributeError):
                    dropped += 1
                    continue
                if isinstance(row_step, (int, float)) and row_step > step:
                    dropped += 1
                    continue
                rows.append(line if line.endswith("\n") else line + "\n")
            if dropped:
                _atomic_write_bytes(self.path, "".join(rows).encode("utf-8"))
        finally:
            self._file = open(self.path, "a", encoding="utf-8")
        self._plot_rows = [r for r in self._plot_rows if r.get("step", 0) <= step]
        if self._tb is not None:
            self._tb.session_start(step + 1)
            self._tb.flush()
        return dropped

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Write the final plot and close the files. Safe to call twice."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._plot_rows:
            self.plot()
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

