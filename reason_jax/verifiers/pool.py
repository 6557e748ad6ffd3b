"""The verifier bridge: a persistent pool of worker processes with parent-enforced deadlines.

Workers are fresh interpreters (``subprocess`` fork+exec, i.e. spawn semantics: the parent,
which holds JAX threads, is never forked and its ``__main__`` is never re-imported). The
parent owns every deadline: a sample running longer than ``timeout_s + kill_grace_s`` gets
status ``timeout`` and reward 0, its worker is killed (with anything it started) and
replaced, and the other samples of its chunk are re-queued. A verifier that raises, or a
worker that dies, gives status ``crash`` for that one sample.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait as mp_wait
from typing import Any, Sequence

from . import sandbox
from ._worker import PROGRESS_BYTES
from .base import CRASH, TIMEOUT, ScoreResult, compose, failure_info
from .registry import load, resolve_path

log = logging.getLogger(__name__)

_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection as C\n"
    "r = C(int(sys.argv[1]), writable=False); w = C(int(sys.argv[2]), readable=False)\n"
    "sys.path[:] = r.recv()\n"
    "from reason_jax.verifiers._worker import main\n"
    "main(r, w, int(sys.argv[3]), int(sys.argv[4]))\n"
)


class _Task:
    __slots__ = ("tid", "pending", "started", "last_event")

    def __init__(self, tid, idxs, now):
        self.tid, self.pending, self.started, self.last_event = tid, set(idxs), now, now


class _Worker:
    def __init__(self):
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        self._progress_file = tempfile.TemporaryFile()
        self._progress_file.truncate(PROGRESS_BYTES)
        self.mm = mmap.mmap(self._progress_file.fileno(), PROGRESS_BYTES)
        fd = self._progress_file.fileno()
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("PYTHONSTARTUP", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(p2c_r), str(c2p_w), str(fd), str(os.getpid())],
            pass_fds=(p2c_r, c2p_w, fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=env, close_fds=True)
        os.close(p2c_r)
        os.close(c2p_w)
        self.tx = Connection(p2c_w, readable=False)
        self.rx = Connection(c2p_r, writable=False)
        self.tx.send(list(sys.path))
        self.ready = False
        self.alive = True
        self.task: _Task | None = None
        self.spawned = time.monotonic()

    def progress(self) -> tuple[int, float]:
        """(index of the running sample or -1, its start time)."""
        for _ in range(3):
            tok1 = struct.unpack_from("q", self.mm, 0)[0]
            start = struct.unpack_from("d", self.mm, 8)[0]
            tok2 = struct.unpack_from("q", self.mm, 0)[0]
            if tok1 == tok2:
                return tok1 - 1, start
        return -1, 0.0

    def kill(self) -> None:
        if not self.alive:
            return
        self.alive = False
        sandbox_pgid = struct.unpack_from("q", self.mm, 16)[0]
        pid = self.proc.pid
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.warning("verifier worker %d did not die after SIGKILL", pid)
        sandbox.cleanup_after_worker(pid, sandbox_pgid)
        self._close_fds()

    def stop(self, timeout: float = 1.0) -> None:
        if not self.alive:
            return
        try:
            self.tx.send(None)
            self.proc.wait(timeout=timeout)
            self.alive = False
            self._close_fds()
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.kill()

    def _close_fds(self):
        for c in (self.tx, self.rx):
            try:
                c.close()
            except OSError:
                pass
        try:
            self.mm.close()
            self._progress_file.close()
        except (OSError, ValueError, BufferError):
            pass


class VerifierPool:
    """A persistent, bounded pool of verifier worker processes.

    Args:
      num_workers: worker processes (default ``min(4, cpu_count)``); ``0`` scores in-process
        without any timeout enforcement (debugging only).
      kill_grace_s: the parent kills a sample after ``timeout_s + kill_grace_s`` (the code
        sandbox enforces ``timeout_s`` itself; the grace only backs it up).
      chunk_size: samples per worker task (default: about N / (4 * num_workers), at most 64).

    Use as a context manager or call :meth:`close`. Not thread-safe: one ``score`` at a time.
    """

    def __init__(self, num_workers: int | None = None, *, kill_grace_s: float = 0.5,
                 chunk_size: int | None = None):
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        self.num_workers = int(num_workers)
        self.kill_grace_s = float(kill_grace_s)
        self.chunk_size = chunk_size
        self._workers = [_Worker() for _ in range(self.num_workers)]
        self._tid = 0
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0

    # ------------------------------------------------------------------ public
    def score(self, name: str, completions: Sequence[str], records: Sequence[Any], *,
              timeout_s: float = 10.0, batch_timeout_s: float | None = None,
              **options) -> ScoreResult:
        """Scores ``completions[i]`` against ``records[i]`` with verifier ``name``.

        ``timeout_s`` bounds each sample; ``batch_timeout_s`` (optional) bounds the whole call
        (samples not finished by then get status ``timeout``). Other keyword options go to the
        verifier and to reward composition (``correct_reward``, ``wrong_reward``,
        ``format_reward``, ``format_error_reward``, ``all_or_nothing``...).
        """
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        path = resolve_path(name)
        t0 = time.monotonic()
        if len(completions) == 0:
            return ScoreResult.from_infos([], 0.0)
        with self._lock:
            if self.num_workers == 0:
                infos = self._score_inline(path, completions, records, timeout_s, options)
            else:
                infos = self._score_pool(path, list(completions), list(records), timeout_s,
                                         batch_timeout_s, options)
        return ScoreResult.from_infos(infos, time.monotonic() - t0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.stop()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.alive]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _score_inline(path, completions, records, timeout_s, options):
        fn = load(path)
        infos = []
        for c, r in zip(completions, records):
            try:
                infos.append(compose(fn(c, r, timeout_s=timeout_s, **options), options))
            except Exception as e:  # noqa: BLE001
                infos.append(failure_info(CRASH, f"{type(e).__name__}: {e}", options))
        return infos

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()
        self.restarts += 1

    def _score_pool(self, path, completions, records, timeout_s, batch_timeout_s, options):
        n = len(completions)
        infos: list = [None] * n
        remaining = n
        attempts = [0] * n
        nw = len(self._workers)
        chunk = self.chunk_size or max(1, min(64, math.ceil(n / (4 * nw))))
        queue = collections.deque(list(range(i, min(i + chunk, n))) for i in range(0, n, chunk))
        limit = timeout_s + self.kill_grace_s
        t0 = time.monotonic()
        batch_deadline = t0 + batch_timeout_s if batch_timeout_s else math.inf
        boot_failures = 0

        def finish(i, info):
            nonlocal remaining
            if infos[i] is None:
                infos[i] = info
                remaining -= 1

        def requeue(w):
            task, w.task = w.task, None
            if task is None:
                return
            running, _ = w.progress()
            rest = []
            for i in sorted(task.pending):
                if infos[i] is not None:
                    continue
                if i == running:
                    continue
                attempts[i] += 1
                if attempts[i] > 2:
                    finish(i, failure_info(CRASH, "worker lost this sample repeatedly", options))
                else:
                    rest.append([i])
            queue.extendleft(reversed(rest))

        while remaining:
            now = time.monotonic()
            # Dispatch to idle workers.
            for w in list(self._workers):
                if not queue:
                    break
                if w.alive and w.ready and w.task is None:
                    idxs = [i for i in queue.popleft() if infos[i] is None]
                    if not idxs:
                        continue
                    self._tid += 1
                    try:
                        w.tx.send((self._tid, path, [(i, completions[i], records[i]) for i in idxs],
                                   options, timeout_s))
                        w.task = _Task(self._tid, idxs, time.monotonic())
                    except (OSError, ValueError):
                        queue.appendleft(idxs)
                        self._replace(w)
            # Wait for messages, at most until the nearest deadline.
            now = time.monotonic()
            nearest = min(batch_deadline, now + 1.0)
            for w in self._workers:
                if w.task is not None:
                    nearest = min(nearest, self._sample_start(w) + limit)
            conns = {w.rx: w for w in self._workers if w.alive}
            for conn in mp_wait(list(conns), timeout=max(0.0, nearest - now)):
                w = conns[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = None
                now = time.monotonic()
                if msg is None:  # the worker died
                    if not w.ready:
                        boot_failures += 1
                    if w.task is not None:
                        running, _ = w.progress()
                        if running in w.task.pending:
                            finish(running, failure_info(CRASH, "verifier worker died", options))
                        requeue(w)
                    self._replace(w)
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready = True
                    boot_failures = 0
                    continue
                _, tid, results = msg
                if w.task is None or w.task.tid != tid:
                    continue
                for i, info in results:
                    finish(i, info)
                    w.task.pending.discard(i)
                w.task.last_event = now
                if kind == "done":
                    if w.task.pending:
                        requeue(w)
                    w.task = None
            if boot_failures >= 3:
                raise RuntimeError("verifier workers fail to start (see stderr)")
            # Enforce per-sample deadlines.
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is None or not w.alive:
                    continue
                if now >= self._sample_start(w) + limit:
                    running, _ = w.progress()
                    if running in w.task.pending:
                        finish(running, failure_info(
                            TIMEOUT, f"exceeded timeout_s={timeout_s}", options))
                    else:  # stuck outside any sample (e.g. loading the verifier)
                        for i in w.task.pending:
                            finish(i, failure_info(TIMEOUT, "worker stuck", options))
                    requeue(w)
                    self._replace(w)
            if now >= batch_deadline:
                for i in range(n):
                    finish(i, failure_info(TIMEOUT, "batch_timeout_s exceeded", options))
                for w in list(self._workers):
                    if w.task is not None:
                        w.task = None
                        self._replace(w)
                queue.clear()
        # Workers still running a stale task (all samples already decided) are replaced.
        for w in list(self._workers):
            if w.task is not None:
                w.task = None
                self._replace(w)
        return infos

    @staticmethod
    def _sample_start(w: _Worker) -> float:
        running, start = w.progress()
        task = w.task
        if running in task.pending:
            return max(start, task.started)
        return max(task.last_event, task.started)


_DEFAULT: VerifierPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> VerifierPool:
    """The lazily created module-level pool used by :func:`reason_jax.verifiers.score`."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed:
            _DEFAULT = VerifierPool()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def close_default_pool() -> None:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is not None:
            _DEFAULT.close()
            _DEFAULT = None
