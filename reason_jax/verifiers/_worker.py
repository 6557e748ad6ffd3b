"""The verifier worker process (a fresh interpreter started by :mod:`.pool`; never forked).

Protocol over two pipes (``multiprocessing.connection`` framing): the parent first sends
``(sys.path, isolate)``; the worker answers ``("ready", pid, caps)``; then each task is
``(task_id, path, items, options, timeout_s)`` with ``items = [(index, completion, record)]``
and the worker answers ``("partial"|"done", task_id, [(index, outcome), ...])``; ``None`` stops
it. Replies are JSON (:func:`.base.outcome_of`), never pickles: the parent must not unpickle
what a worker whose parser was subverted could write; the parent composes the rewards.
Before each sample the worker writes ``(index + 1, start_monotonic)`` into a small shared
mmap, so the parent knows exactly which sample is running and since when, and can kill the
worker when that sample exceeds its deadline. This module must not import JAX.

``isolate`` is None (a plain worker) or ``{"path": verifier, "memory_mb": n}``: the worker
imports that verifier and calls its ``prepare`` (trusted code, as the calling user), then
isolates itself (:func:`.isolation.isolate_worker`) before it reads any untrusted input;
``caps`` says which layers are on. If that fails it sends ``("boot_error", pid, detail)`` and
exits. A verifier that gives up at its own deadline raises ``TimeoutError``: the sample gets
status ``timeout``, as if the parent had killed it, and the worker lives on.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import struct
import threading
import time

PROGRESS_BYTES = 24  # int64 token (index+1, 0 = idle), float64 start, int64 sandbox pgid
FLUSH_EVERY_S = 0.05


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def main(r, w, mm_fd: int, parent_pid: int, isolate: dict | None = None) -> None:
    try:
        _main(r, w, mm_fd, parent_pid, isolate)
    except (BrokenPipeError, ConnectionError, EOFError):
        os._exit(0)  # the parent went away (closed or killed the pool)


def _main(r, w, mm_fd: int, parent_pid: int, isolate: dict | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the training process
    os.environ["REASON_JAX_VERIFIER_WORKER"] = "1"
    # Everything is imported before an isolated worker drops to its sandbox uid, which may
    # not be able to read the interpreter's files (e.g. a pyenv under a mode-700 /root).
    from . import isolation, sandbox
    from .base import CRASH, TIMEOUT, failure_outcome, outcome_of
    from .registry import load

    def reply(msg) -> None:
        w.send_bytes(json.dumps(msg).encode())

    caps = None
    if isolate is not None:  # before any thread starts: user namespaces need one thread
        try:
            prepare = getattr(load(isolate["path"]), "prepare", None)
            if prepare is not None:
                prepare()
            caps = isolation.isolate_worker(int(isolate["memory_mb"]))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            reply(("boot_error", os.getpid(), f"{type(e).__name__}: {e}"[:1000]))
            os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    mm = mmap.mmap(mm_fd, PROGRESS_BYTES)
    sandbox.set_progress_mmap(mm)

    reply(("ready", os.getpid(), caps))
    while True:
        try:
            msg = r.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, path, items, options, timeout_s = msg
        try:
            fn = load(path)
        except BaseException as e:  # noqa: BLE001 - reported as crash
            detail = f"cannot load verifier {path}: {type(e).__name__}: {e}"
            reply(("done", task_id, [(i, failure_outcome(CRASH, detail)) for i, _, _ in items]))
            continue
        results = []
        last = time.monotonic()
        for k, (idx, completion, record) in enumerate(items):
            if isolate is not None:
                isolation.limit_cpu(timeout_s)
            struct.pack_into("d", mm, 8, time.monotonic())
            struct.pack_into("q", mm, 0, idx + 1)
            try:
                outcome = outcome_of(fn(completion, record, timeout_s=timeout_s, **options))
            except TimeoutError as e:
                outcome = failure_outcome(TIMEOUT, str(e) or f"exceeded timeout_s={timeout_s}")
            except BaseException as e:  # noqa: BLE001 - anything a verifier raises is a crash
                outcome = failure_outcome(CRASH, f"{type(e).__name__}: {e}")
            results.append((idx, outcome))
            now = time.monotonic()
            # The last result always travels with "done": the parent may stop listening once
            # every sample is decided, and would replace a worker whose task looks unfinished.
            if now - last > FLUSH_EVERY_S and k + 1 < len(items):
                reply(("partial", task_id, results))
                results, last = [], now
        struct.pack_into("q", mm, 0, 0)
        reply(("done", task_id, results))
