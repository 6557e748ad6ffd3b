"""A test-only verifier that acts like a parser an attacker has taken over: registered
``isolated`` (as ``math`` is), it runs in isolated workers and tries, as the completion says,
to get out; the verdict's detail (short JSON) reports what it managed. Imported by workers by path
("verifier_probes:hostile"), so it is kept free of heavy imports. Contains no tests."""

import encodings.idna  # noqa: F401 - sockets need it; the sandbox uid may not be able to load it
import json
import os
import signal
import socket
import struct
import time

from reason_jax.verifiers import Verdict, isolation, sandbox


def _attempt(fn) -> str:
    try:
        fn()
        return "done"
    except (OSError, MemoryError) as e:
        return type(e).__name__


def _write(path):
    with open(path, "w") as f:
        f.write("x")


def _read(path):
    with open(path, "rb") as f:
        f.read(1)


def _fork_sleepers(n):
    made = 0
    for _ in range(n):
        try:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        except OSError:
            break
    return made


def hostile(completion, record, **options):
    out = {}
    if completion == "whoami":
        out = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
               "cwd": os.getcwd(), "active": isolation.active(), "pid": os.getpid()}
    elif completion == "write":
        out["results"] = [_attempt(lambda p=p: _write(p)) for p in record["paths"]]
    elif completion == "read":
        out["results"] = [_attempt(lambda p=p: _read(p)) for p in record["paths"]]
    elif completion == "net":
        out["connect"] = _attempt(lambda: socket.create_connection(
            ("127.0.0.1", record["port"]), timeout=0.5).close())
    elif completion == "kill":
        out["kill"] = _attempt(lambda: os.kill(record["victim"], signal.SIGKILL))
    elif completion == "fork":
        out = {"forked": _fork_sleepers(20), "pid": os.getpid()}
    elif completion == "memory":
        out["alloc"] = _attempt(lambda: bytearray(4 << 30))
    elif completion == "spin":  # burns CPU until RLIMIT_CPU stops it
        while True:
            pass
    elif completion == "reward":
        return 1e9  # an isolated worker may only report verdicts
    elif completion == "forge_progress":
        # Point the parent's cleanup at the victim's process group, claim the running
        # sample started far in the future, and hang: the parent must still kill this worker
        # in time, and only this worker.
        struct.pack_into("q", sandbox._progress_mm, 16, record["victim"])
        struct.pack_into("d", sandbox._progress_mm, 8, time.monotonic() + 3600.0)
        time.sleep(3600)
    return Verdict("wrong", detail=json.dumps(out))
