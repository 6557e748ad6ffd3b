"""Training metrics: `metrics.jsonl`, TensorBoard scalars and `curves.png`, local or gs://.

`MetricsWriter` is the one sink the training loop talks to:

  * `WORKDIR/metrics.jsonl`: one JSON object per `write`, always with `step`. This is the
    record of truth: greppable, loadable with `read_metrics` or `pandas.read_json(...,
    lines=True)`. JSON has no NaN/Infinity, so non-finite floats are written as `null`.
    Locally each row is appended and flushed at once. A bucket has no append, so there the
    whole file is uploaded (one atomic object write) every `remote_flush_s` and on `flush`
    (the loop flushes at every checkpoint, so a resumed run never lacks rows it trained).
  * `WORKDIR/tb/`: the same scalars as TensorBoard events (`tensorboard.py`).
  * `WORKDIR/curves.png` (`plots.py`), rewritten every `plot_every` writes and on `close`.

Only one process should write (pass `enabled=jax.process_index() == 0`); disabled writers
accept every call and do nothing. Plotting or TensorBoard failures are logged, never raised:
losing a picture must not kill a training run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from reason_jax import paths
from reason_jax.observe.plots import DEFAULT_PANELS, Panel, panel_keys, plot_curves

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PANELS", "MetricsWriter", "plot_curves", "read_metrics", "to_jsonable"]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TB_DIR = "tb"


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


def read_metrics(path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (or of `path/metrics.jsonl` for a work directory).

    Blank and unparsable lines are skipped with a warning: a process killed mid-write leaves a
    partial last line, which must not make the whole history unreadable.
    """
    p = paths.as_path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    return _parse_lines(p.read_text(encoding="utf-8").splitlines(), str(p))


def _parse_lines(lines: Sequence[str], where: str) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping unparsable line", where, lineno)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsWriter:
    """Appends metrics to `workdir/metrics.jsonl`, mirrors them to TensorBoard and keeps
    `workdir/curves.png` current.

    Args:
      workdir: run directory, local or gs:// (created if needed).
      enabled: False on every process but one (e.g. `jax.process_index() == 0`).
      tensorboard: also write `workdir/tb/events.out.tfevents.*`.
      plot_every: rewrite curves.png every this many `write` calls (0 disables periodic
        plots; `close` still plots).
      panels: what curves.png shows (`plots.py`; missing keys are skipped).
      remote_flush_s: on a bucket, upload metrics.jsonl and the events at most this often.

    Existing rows of metrics.jsonl (a resumed run) are kept and included in the plots; call
    `truncate_after(checkpoint_step)` at resume so recomputed steps are not duplicated.
    """

    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True,
                 plot_every: int = 10, panels: Sequence[Panel] = DEFAULT_PANELS,
                 remote_flush_s: float = 30.0):
        self.enabled = enabled
        self.plot_every = plot_every
        self.panels = tuple(panels)
        self._keys = panel_keys(self.panels)
        self.dir = paths.as_path(workdir)
        self.path = self.dir / METRICS_FILE
        self.curves_path = self.dir / CURVES_FILE
        self.remote = paths.is_remote(self.dir)
        self.remote_flush_s = remote_flush_s
        self._lines: list[str] = []  # remote only: the whole file, uploaded on flush
        self._dirty = False
        self._last_upload = time.monotonic()
        self._file = None
        self._tb = None
        self._plot_rows: list[dict[str, Any]] = []  # only step + plotted keys, for memory
        self._writes_since_plot = 0
        self._can_plot = True
        self._closed = False
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = []
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                # A kill mid-write leaves a line without "\n"; appending after it would glue
                # the next row onto it and corrupt both, so cut it off.
                keep = text.rfind("\n") + 1
                log.warning("%s: dropping partial last line (%d bytes)", self.path,
                            len(text) - keep)
                text = text[:keep]
                paths.write_text_atomic(self.path, text)
            lines = text.splitlines(keepends=True)
        self._plot_rows = [self._plot_row(r) for r in _parse_lines(lines, str(self.path))]
        if self.remote:
            self._lines = lines
        else:
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from reason_jax.observe.tensorboard import TensorBoard

                self._tb = TensorBoard(str(self.dir / TB_DIR))
            except Exception as e:  # noqa: BLE001 - logging must not kill training
                log.warning("TensorBoard logging disabled: %s", e)

    def _plot_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("step", *self._keys) if k in row}

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` at `step`: one JSON line, TensorBoard scalars, maybe a new plot."""
        if not self.enabled:
            return
        if self._closed:
            raise ValueError("MetricsWriter is closed")
        step = int(step)
        plain = {str(k): _plain(v) for k, v in metrics.items() if k != "step"}
        row: dict[str, Any] = {"step": step, **_finite_or_none(plain)}
        line = json.dumps(row, allow_nan=False) + "\n"
        if self.remote:
            self._lines.append(line)
            self._dirty = True
        else:
            self._file.write(line)
            self._file.flush()
        if self._tb is not None:
            try:
                # From `plain`, not `row`: TensorBoard can show NaN/inf, which is worth seeing.
                self._tb.scalars(step, {k: v for k, v in plain.items()
                                        if isinstance(v, (int, float))})
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard write failed, disabling it: %s", e)
                self._tb = None
        if not self.remote or time.monotonic() - self._last_upload >= self.remote_flush_s:
            self.flush()
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
            plot_curves(self._plot_rows, self.curves_path, self.panels)
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
        if self._file is not None:
            self._file.close()
        lines = self._lines if self.remote else \
            self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept, dropped = [], 0
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
            kept.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            paths.write_text_atomic(self.path, "".join(kept))
        if self.remote:
            self._lines = kept
        else:
            self._file = open(self.path, "a", encoding="utf-8")
        self._plot_rows = [r for r in self._plot_rows if r.get("step", 0) <= step]
        if self._tb is not None:
            self._tb.restart(step + 1)
        return dropped

    def flush(self) -> None:
        """Everything written so far is durable (on a bucket: uploaded) when this returns."""
        if not self.enabled:
            return
        if self._file is not None:
            self._file.flush()
        if self.remote and self._dirty:
            paths.write_text_atomic(self.path, "".join(self._lines))
            self._dirty = False
        self._last_upload = time.monotonic()
        if self._tb is not None:
            try:
                self._tb.flush()
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard flush failed, disabling it: %s", e)
                self._tb = None

    def close(self) -> None:
        """Write the final plot, flush and close the files. Safe to call twice."""
        if not self.enabled or self._closed:
            return
        if self._plot_rows:
            self.plot()
        self.flush()
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
