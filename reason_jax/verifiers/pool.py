"""The verifier bridge: a persistent pool of worker processes with parent-enforced deadlines.

Workers are fresh interpreters (``subprocess`` fork+exec, i.e. spawn semantics: the parent,
which holds JAX threads, is never forked and its ``__main__`` is never re-imported). The
parent owns every deadline: a sample running longer than ``timeout_s + kill_grace_s`` gets
status ``timeout`` and reward 0, its worker is killed (with anything it started) and
replaced, and the other samples of its chunk are re-queued. A verifier that raises, or a
worker that dies, gives status ``crash`` for that one sample.

Verifiers registered as isolated (``math``) get workers of their own, started lazily, that
isolate themselves at start-up (:mod:`.isolation`). The parent trusts nothing such a worker
says: replies are JSON and checked, rewards are composed here, and the sandbox pgid it could
write into the progress mmap is ignored (its uid is what gets killed).
"""

from __future__ import annotations

import atexit
import collections
import json
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
from .base import CRASH, TIMEOUT, ScoreResult, compose, failure_info, info_from_outcome
from .registry import is_isolated, load, resolve_path

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 16 << 20  # a reply is at most a chunk of clipped infos

_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection as C\n"
    "r = C(int(sys.argv[1]), writable=False); w = C(int(sys.argv[2]), readable=False)\n"
    "sys.path[:], isolate = r.recv()\n"
    "from reason_jax.verifiers._worker import main\n"
    "main(r, w, int(sys.argv[3]), int(sys.argv[4]), isolate)\n"
)


class _Task:
    __slots__ = ("tid", "pending", "started", "last_event", "hard_deadline")

    def __init__(self, tid, idxs, now, limit):
        self.tid, self.pending, self.started, self.last_event = tid, set(idxs), now, now
        # However the worker reports its progress, the chunk ends by then.
        self.hard_deadline = now + len(idxs) * limit


class _Worker:
    """One worker process. ``isolate``: None (plain) or the isolated verifier path it serves."""

    def __init__(self, isolate: str | None = None, memory_mb: int = 2048):
        self.isolate = isolate
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
        self.tx.send((list(sys.path), None if isolate is None else
                      {"path": isolate, "memory_mb": int(memory_mb)}))
        self.ready = False
        self.caps = None
        self.boot_error: str | None = None
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

    def receive(self):
        """The next message ``[kind, a, b]``, or None when the worker died or sent garbage."""
        try:
            msg = json.loads(self.rx.recv_bytes(MAX_REPLY_BYTES))
        except (EOFError, OSError, ValueError, RecursionError):
            return None
        if isinstance(msg, list) and len(msg) == 3 and isinstance(msg[0], str):
            return msg
        return None

    def kill(self) -> None:
        if not self.alive:
            return
        self.alive = False
        sandbox_pgid = 0 if self.isolate else struct.unpack_from("q", self.mm, 16)[0]
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
            if self.isolate:  # whatever an isolated worker started ends with it
                sandbox.cleanup_after_worker(self.proc.pid, 0)
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
      worker_memory_mb: address-space limit of each isolated worker.

    An isolated verifier gets ``num_workers`` workers of its own, started on its first use.
    Use as a context manager or call :meth:`close`. Not thread-safe: one ``score`` at a time.
    """

    def __init__(self, num_workers: int | None = None, *, kill_grace_s: float = 0.5,
                 chunk_size: int | None = None, worker_memory_mb: int = 2048):
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        self.num_workers = int(num_workers)
        self.kill_grace_s = float(kill_grace_s)
        self.chunk_size = chunk_size
        self.worker_memory_mb = int(worker_memory_mb)
        # Worker groups: None -> plain workers (started now), path -> that isolated verifier's.
        self._groups: dict[str | None, list[_Worker]] = {
            None: [_Worker() for _ in range(self.num_workers)]}
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
        if self.num_workers == 0 and is_isolated(path):
            raise ValueError(f"verifier {name!r} runs only in isolated workers; "
                             "VerifierPool(num_workers=0) scores in-process")
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
        for group in self._groups.values():
            for w in group:
                w.stop()
        self._groups = {}

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
        """Pids of the live workers, plain and isolated."""
        return [w.proc.pid for group in self._groups.values() for w in group if w.alive]

    def isolation(self, name: str) -> dict | None:
        """What the isolated workers of verifier ``name`` reported at start-up (which layers
        are on; see :func:`reason_jax.verifiers.isolation.isolate_worker`), starting them and
        waiting for the first if needed. None for a verifier that is not isolated."""
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        path = resolve_path(name)
        if not is_isolated(path):
            return None
        workers = self._group(path)
        while not any(w.ready for w in workers):
            ready = mp_wait([w.rx for w in workers if w.alive], timeout=60.0)
            if not ready:
                raise RuntimeError("isolated verifier workers did not start within 60 s")
            for w in [w for w in workers if w.rx in ready]:
                msg = w.receive()
                if not self._boot_message(w, msg):
                    detail = w.boot_error or "exited before it was ready"
                    self._replace(w)
                    raise RuntimeError(f"verifier worker failed to start: {detail}")
        return next(w.caps for w in workers if w.ready)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _score_inline(path, completions, records, timeout_s, options):
        fn = load(path)
        infos = []
        for c, r in zip(completions, records):
            try:
                infos.append(compose(fn(c, r, timeout_s=timeout_s, **options), options))
            except TimeoutError as e:
                infos.append(failure_info(TIMEOUT, str(e), options))
            except Exception as e:  # noqa: BLE001
                infos.append(failure_info(CRASH, f"{type(e).__name__}: {e}", options))
        return infos

    def _group(self, path: str) -> list[_Worker]:
        key = path if is_isolated(path) else None
        if key not in self._groups:
            self._groups[key] = [_Worker(key, self.worker_memory_mb)
                                 for _ in range(self.num_workers)]
        return self._groups[key]

    def _replace(self, w: _Worker) -> None:
        w.kill()
        group = self._groups[w.isolate]
        group[group.index(w)] = _Worker(w.isolate, self.worker_memory_mb)
        self.restarts += 1

    _warned_caps = False

    def _boot_message(self, w: _Worker, msg) -> bool:
        """Handles ``ready`` / ``boot_error``; True if ``msg`` was ``ready``."""
        if msg and msg[0] == "ready" and not w.ready:
            w.ready, w.caps = True, msg[2] if isinstance(msg[2], dict) else None
            missing = [k for k in ("netns", "mountns", "uid") if w.caps and not w.caps.get(k)]
            if missing and not VerifierPool._warned_caps:
                VerifierPool._warned_caps = True
                log.warning("isolated verifier workers run WITHOUT: %s (see docs/verifiers.md)",
                            ", ".join(missing))
            return True
        if msg and msg[0] == "boot_error":
            w.boot_error = str(msg[2])[:1000]
        return False

    def _score_pool(self, path, completions, records, timeout_s, batch_timeout_s, options):
        n = len(completions)
        infos: list = [None] * n
        remaining = n
        attempts = [0] * n
        workers = self._group(path)  # _replace swaps entries of this very list
        nw = len(workers)
        chunk = self.chunk_size or max(1, min(64, math.ceil(n / (4 * nw))))
        queue = collections.deque(list(range(i, min(i + chunk, n))) for i in range(0, n, chunk))
        limit = timeout_s + self.kill_grace_s
        t0 = time.monotonic()
        batch_deadline = t0 + batch_timeout_s if batch_timeout_s else math.inf
        boot_failures = 0
        boot_error = "see stderr"

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
            for w in list(workers):
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
                        w.task = _Task(self._tid, idxs, time.monotonic(), limit)
                    except (OSError, ValueError):
                        queue.appendleft(idxs)
                        self._replace(w)
            # Wait for messages, at most until the nearest deadline.
            now = time.monotonic()
            nearest = min(batch_deadline, now + 1.0)
            for w in workers:
                if w.task is not None:
                    nearest = min(nearest, self._deadline(w, limit))
            conns = {w.rx: w for w in workers if w.alive}
            for conn in mp_wait(list(conns), timeout=max(0.0, nearest - now)):
                w = conns[conn]
                msg = w.receive()
                now = time.monotonic()
                if not msg or msg[0] not in ("partial", "done"):
                    if self._boot_message(w, msg):
                        boot_failures = 0
                        continue
                    # The worker died, failed to start, or sent garbage: it is replaced.
                    if not w.ready:
                        boot_failures += 1
                        boot_error = w.boot_error or boot_error
                    if w.task is not None:
                        running, _ = w.progress()
                        if running in w.task.pending:
                            finish(running, failure_info(CRASH, "verifier worker died", options))
                        requeue(w)
                    self._replace(w)
                    continue
                kind, tid, results = msg[0], msg[1], msg[2]
                if w.task is None or w.task.tid != tid:
                    continue
                for item in results if isinstance(results, list) else ():
                    i, outcome = item if isinstance(item, list) and len(item) == 2 else (None, 0)
                    # A worker only decides the samples it was given.
                    if isinstance(i, int) and i in w.task.pending:
                        finish(i, info_from_outcome(outcome, options, isolated=bool(w.isolate)))
                        w.task.pending.discard(i)
                w.task.last_event = now
                if kind == "done":
                    if w.task.pending:
                        requeue(w)
                    w.task = None
            if boot_failures >= 3:
                raise RuntimeError(f"verifier workers fail to start: {boot_error}")
            # Enforce per-sample deadlines.
            now = time.monotonic()
            for w in list(workers):
                if w.task is None or not w.alive:
                    continue
                if now >= self._deadline(w, limit):
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
                for w in list(workers):
                    if w.task is not None:
                        w.task = None
                        self._replace(w)
                queue.clear()
        # Workers still running a stale task (all samples already decided) are replaced.
        for w in list(workers):
            if w.task is not None:
                w.task = None
                self._replace(w)
        return infos

    @staticmethod
    def _deadline(w: _Worker, limit: float) -> float:
        """When the running sample of ``w`` must be finished. The start time a worker writes
        is trusted only up to now, and never past the chunk's own hard deadline."""
        running, start = w.progress()
        task = w.task
        if running in task.pending:
            begun = max(min(start, time.monotonic()), task.started)
        else:
            begun = max(task.last_event, task.started)
        return min(begun + limit, task.hard_deadline)


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
