"""A one-line progress display that suits both an interactive terminal and a CI/cluster log.

    rl  12/60 [####............] reward 0.41 acc 0.62 tok/s 5,120 eta 1m02s

On a TTY the line is redrawn in place with `\\r`. Anywhere else (a log file, CI, `kubectl
logs`) a redrawn line would be thousands of lines, so a full line is printed at most every
`interval` seconds, plus the first update and the last one, keeping logs short but alive.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "format_duration", "format_value"]


def format_duration(seconds: float) -> str:
    """Compact duration: 42s, 1m02s, 2h05m, 3d04h."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_value(value: Any) -> str:
    """Short human formatting: integers with thousands separators, floats to ~3 significant
    figures (large ones as integers, tiny ones like learning rates in exponent form)."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    try:
        x = float(value)  # numpy / jax scalars and 0-d arrays
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a == 0 or a >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2e}"


class Progress:
    """Progress over `total` steps, labelled `desc`.

    Args:
      total: the step count at completion.
      desc: a short label printed first (e.g. "sft", "rl", "eval").
      stream: where to write; TTY-ness is detected from it.
      enabled: False makes every method a no-op (use on non-zero processes).
      interval: seconds between lines when the stream is not a TTY.
      width: characters in the bar.
      clock: time source (injectable for tests).

    The ETA uses the rate since the first update, so one-off costs before it (compilation,
    restoring a checkpoint) do not inflate it; a resumed run starting at step 40 of 60 gets
    an ETA for the remaining 20 steps.
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None,
                 enabled: bool = True, *, interval: float = 10.0, width: int = 16,
                 clock: Callable[[], float] = time.monotonic):
        self.total = int(total)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interval = interval
        self.width = width
        self._clock = clock
        try:
            self.is_tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self.is_tty = False
        self._first: tuple[int, float] | None = None
        self._last_print = -math.inf
        self._last_line = ""
        self._printed_last = True  # nothing pending yet
        self._drawn_len = 0
        self._closed = False

    def format(self, step: int, fields: dict[str, Any], eta: float) -> str:
        """The display line for `step` with `fields` (name -> value) and an ETA in seconds."""
        width_total = len(str(self.total))
        frac = min(max(step / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        filled = int(frac * self.width)
        parts = [f"{self.desc}  " if self.desc else "",
                 f"{step:>{width_total}}/{self.total} ",
                 f"[{'#' * filled}{'.' * (self.width - filled)}]"]
        parts += [f" {name} {format_value(v)}" for name, v in fields.items()]
        if step < self.total:
            parts.append(f" eta {format_duration(eta)}")
        return "".join(parts)

    def update(self, step: int, /, **fields: Any) -> None:
        """Show progress at `step` (steps completed) with extra named fields. Names that are
        not identifiers, such as "tok/s", can be passed as `**{"tok/s": 5120}`."""
        if not self.enabled or self._closed:
            return
        now = self._clock()
        step = int(step)
        if self._first is None:
            self._first = (step, now)
        first_step, first_time = self._first
        done = step - first_step
        eta = ((self.total - step) * (now - first_time) / done) if done > 0 else math.inf
        line = self.format(step, fields, eta)
        self._last_line = line
        final = step >= self.total
        if self.is_tty:
            # Pad over leftovers of a longer previous line instead of relying on ANSI codes.
            pad = " " * max(0, self._drawn_len - len(line))
            self.stream.write("\r" + line + pad)
            self._drawn_len = len(line)
            self.stream.flush()
            self._printed_last = True
        elif final or now - self._last_print >= self.interval:
            self._emit(line)
            self._last_print = now
        else:
            self._printed_last = False

    def _emit(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._printed_last = True

    def close(self) -> None:
        """Finish: end the TTY line, or print the last state if it was rate-limited away."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self.is_tty:
            if self._drawn_len:
                self.stream.write("\n")
                self.stream.flush()
        elif not self._printed_last:
            self._emit(self._last_line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
