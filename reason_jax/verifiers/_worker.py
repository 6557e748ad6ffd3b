"""The verifier worker process (a fresh interpreter started by :mod:`.pool`; never forked).

Protocol over two pipes (``multiprocessing.connection`` framing): the parent first sends
``sys.path``; the worker answers ``("ready", pid)``; then each task is
``(task_id, path, items, options, timeout_s)`` with ``items = [(index, completion, record)]``
and the worker answers ``("partial"|"done", task_id, [(index, info), ...])``; ``None`` stops it.
Before each sample the worker writes ``(index + 1, start_monotonic)`` into a small shared
mmap, so the parent knows exactly which sample is running and since when, and can kill the
worker when that sample exceeds its deadline. This module must not import JAX.
"""

from __future__ import annotations

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


def main(r, w, mm_fd: int, parent_pid: int) -> None:
    try:
        _main(r, w, mm_fd, parent_pid)
    except (BrokenPipeError, ConnectionError, EOFError):
        os._exit(0)  # the parent went away (closed or killed the pool)


def _main(r, w, mm_fd: int, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the training process
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    mm = mmap.mmap(mm_fd, PROGRESS_BYTES)
    os.environ["REASON_JAX_VERIFIER_WORKER"] = "1"
    from . import sandbox
    sandbox.set_progress_mmap(mm)
    from .base import CRASH, compose, failure_info
    from .registry import load

    w.send(("ready", os.getpid()))
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
            w.send(("done", task_id, [(i, failure_info(CRASH, detail, options)) for i, _, _ in items]))
            continue
        results = []
        last = time.monotonic()
        for idx, completion, record in items:
            struct.pack_into("d", mm, 8, time.monotonic())
            struct.pack_into("q", mm, 0, idx + 1)
            try:
                info = compose(fn(completion, record, timeout_s=timeout_s, **options), options)
            except BaseException as e:  # noqa: BLE001 - anything a verifier raises is a crash
                info = failure_info(CRASH, f"{type(e).__name__}: {e}", options)
            results.append((idx, info))
            now = time.monotonic()
            if now - last > FLUSH_EVERY_S:
                w.send(("partial", task_id, results))
                results, last = [], now
        struct.pack_into("q", mm, 0, 0)
        w.send(("done", task_id, results))
