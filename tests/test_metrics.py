"""Training-side logging: the progress line, MetricsWriter (jsonl, TensorBoard, curves)."""

import io
import json
import math
import os
import struct

import numpy as np
import pytest

from helpers import read_tb_events, read_tb_scalars
from reason_jax.observe.metrics import MetricsWriter, plot_curves, read_metrics, to_jsonable
from reason_jax.observe.progress import Progress, format_duration, format_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- Progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_non_tty_is_rate_limited():
    out, clock = io.StringIO(), _Clock()
    p = Progress(60, "rl", stream=out, interval=10.0, clock=clock)
    for step in range(1, 61):
        clock.t = step * 1.0  # one second per step
        p.update(step, reward=0.41, acc=0.625, **{"tok/s": 5120})
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # First update, then at most one line per 10 s, then the final step: short CI logs.
    assert len(lines) == 7
    assert lines[0].startswith("rl   1/60 [")
    assert lines[1].startswith("rl  11/60 [##....")
    assert "reward 0.41 acc 0.62 tok/s 5,120 eta 49s" in lines[1]
    assert lines[-1].startswith("rl  60/60 [################]") and "eta" not in lines[-1]


def test_progress_close_prints_pending_state():
    out, clock = io.StringIO(), _Clock()
    p = Progress(100, "sft", stream=out, clock=clock)
    p.update(1, loss=2.0)
    clock.t = 1.0
    p.update(2, loss=1.5)  # rate-limited away
    p.close()
    p.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("sft    2/100") and "loss 1.50" in lines[-1]


def test_progress_tty_rewrites_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, clock = Tty(), _Clock()
    p = Progress(3, "rl", stream=out, clock=clock)
    for step in (1, 2, 3):
        clock.t = step
        p.update(step, reward=0.5)
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1


def test_progress_disabled_and_formatting():
    out = io.StringIO()
    p = Progress(10, "x", stream=out, enabled=False)
    p.update(5, a=1)
    p.close()
    assert out.getvalue() == ""
    assert format_duration(62) == "1m02s" and format_duration(42) == "42s"
    assert format_duration(3 * 3600 + 5 * 60) == "3h05m" and format_duration(math.inf) == "?"
    assert format_value(5120) == "5,120" and format_value(0.4149) == "0.41"
    assert format_value(np.float32(12345.6)) == "12,346" and format_value(3e-6) == "3.00e-06"


# ---------------------------------------------------------------------------- MetricsWriter


def _rows(n, start=1):
    for step in range(start, start + n):
        yield step, {"reward/mean": np.float32(step / 10), "accuracy": step / 20,
                     "response_length/mean": np.int64(100 + step), "entropy": 0.5,
                     "clip_frac/low": 0.01, "clip_frac/high": 0.02}


def test_to_jsonable():
    assert to_jsonable(np.float32(0.5)) == 0.5 and type(to_jsonable(np.int32(3))) is int
    assert to_jsonable(np.bool_(True)) is True
    assert to_jsonable(float("nan")) is None and to_jsonable(np.float64("inf")) is None
    assert to_jsonable(np.array(2.0)) == 2.0 and to_jsonable(np.array([4])) == 4
    assert to_jsonable(np.array([1.0, np.nan])) == [1.0, None]


def test_metrics_jsonl_content_and_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path), plot_every=0)
    w.write(1, {"loss": np.float32(0.5), "n": np.int64(3), "bad": float("nan"), "lr": 1e-6})
    w.write(2, {"loss": 0.25, "step": 999})  # a "step" inside metrics cannot override
    w.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 0.5, "n": 3, "bad": None, "lr": 1e-6}, {"step": 2, "loss": 0.25}]
    assert "NaN" not in lines[0] and read_metrics(str(tmp_path))[1]["loss"] == 0.25
    scalars = read_tb_scalars(str(tmp_path / "tb"))
    assert scalars["loss"] == [(1, 0.5), (2, 0.25)] and scalars["n"] == [(1, 3.0)]
    assert math.isnan(scalars["bad"][0][1])  # TensorBoard keeps the NaN, which is informative


def test_truncate_after_resume(tmp_path):
    w = MetricsWriter(str(tmp_path), plot_every=0)
    for step, m in _rows(10):
        w.write(step, m)
    w.close()
    # Simulate a crash mid-write: a partial trailing line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "reward/me')
    w = MetricsWriter(str(tmp_path), plot_every=0)  # resumed run, checkpoint at step 6
    assert w.truncate_after(6) == 4
    for step, m in _rows(4, start=7):
        w.write(step, m)
    w.close()
    steps = [r["step"] for r in read_metrics(str(tmp_path))]
    assert steps == list(range(1, 11))
    # TensorBoard was told that steps >= 7 restart.
    events = read_tb_events(str(tmp_path / "tb"))
    assert any(e.session_log.status == 1 and e.step == 7 for e in events)
    # What TensorBoard shows after the purge: each step once.
    assert [s for s, _ in read_tb_scalars(str(tmp_path / "tb"))["accuracy"]] == list(
        range(1, 11))


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(str(tmp_path / "run"), enabled=False)
    w.write(1, {"loss": 1.0})
    assert w.truncate_after(0) == 0
    w.close()
    assert not os.path.exists(tmp_path / "run")


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    w = MetricsWriter(str(tmp_path), tensorboard=False, plot_every=5)
    rows = list(_rows(4))
    for step, m in rows:
        w.write(step, m)
    assert not (tmp_path / "curves.png").exists()
    w.write(5, {**rows[0][1], "eval/pass@1": 0.3})
    _check_png(tmp_path / "curves.png")
    w.close()
    _check_png(tmp_path / "curves.png")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_plot_curves_standalone(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"step": 1, "entropy": 0.7}, {"step": 2, "entropy": None}, {"step": 3, "entropy": 0.6}]
    out = str(tmp_path / "c.png")
    assert plot_curves(rows, out)
    _check_png(out)
    assert not plot_curves([{"step": 1, "unrelated": 1.0}], str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def test_writers_in_the_same_second_keep_their_own_files(tmp_path, monkeypatch):
    """tensorboardX names event files by second and host: without our suffix the second
    writer (a quick resume, or `restart`) replaced the first one's file and its points. The
    names also sort in creation order (TensorBoard reads them so; a purge must come after the
    points it drops), also when a counter gains a digit."""
    import itertools

    from reason_jax.observe import tensorboard
    from reason_jax.observe.tensorboard import TensorBoard

    monkeypatch.setattr(tensorboard, "_WRITER_IDS", itertools.count(9))
    for step in (1, 2, 3):
        tb = TensorBoard(str(tmp_path))
        tb.scalars(step, {"accuracy": step / 10})
        tb.close()
    assert len(os.listdir(tmp_path)) == 3
    assert [s for s, _ in read_tb_scalars(str(tmp_path))["accuracy"]] == [1, 2, 3]
