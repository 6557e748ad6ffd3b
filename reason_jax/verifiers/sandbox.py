"""Run an untrusted Python program in a resource-limited, isolated subprocess.

Layers (the kernel ones live in :mod:`.isolation`, shared with isolated verifier workers; each
is probed once per process; what could not be enabled is logged as a warning and reported by
:func:`capabilities`):

* a fresh temporary directory as cwd (removed afterwards), a scrubbed environment and an
  isolated interpreter (``python -I``), stdin fed from memory, stdout/stderr read with a cap;
* ``setrlimit`` in the child: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE,
  RLIMIT_NPROC, RLIMIT_CORE=0;
* ``start_new_session=True``; on exit/timeout the whole process group is SIGKILLed;
* when running as root: a private network namespace (``unshare(CLONE_NEWNET)``: no interface
  but a down loopback, so no network at all), a private mount namespace with fresh tmpfs over
  ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (nothing can be written outside the work dir and those
  throw-away tmpfs), and a dedicated unprivileged uid (``SANDBOX_UID_BASE + worker pid``) so
  that RLIMIT_NPROC applies (root ignores it), root-only files such as ``/etc/shadow`` are
  unreadable, and every process the program started -- even one that escaped the process
  group with ``setsid`` -- is found by uid and killed;
* without root, when user namespaces are allowed: the same network and mount namespaces
  inside a new user namespace (own uid mapped to itself), but no separate uid;
* ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_PDEATHSIG=SIGKILL`` (the child dies with the worker
  that started it).

Not prevented: reading world-readable files (``/etc/passwd``, world-readable source trees);
without namespaces: network access and writes to world-writable directories. See
docs/verifiers.md.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from . import isolation
from .isolation import SANDBOX_UID_BASE, sandbox_uid  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")

_progress_mm = None
_config = None


def set_progress_mmap(mm) -> None:
    """Called by the worker: the sandbox pgid is published at offset 16 of its progress mmap,
    so the parent can kill it if it has to kill the worker."""
    global _progress_mm
    _progress_mm = mm


def _publish_pgid(pgid: int) -> None:
    if _progress_mm is not None:
        struct.pack_into("q", _progress_mm, 16, pgid)


def _procs_of_uid(uid: int):
    """(pid, state, parent pid) of every process of ``uid``, read from /proc."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            yield int(name), fields[0], int(fields[1])
        except (OSError, IndexError, ValueError):
            continue


def _pids_of_uid(uid: int) -> list[int]:
    return [pid for pid, state, _ in _procs_of_uid(uid) if state not in (b"Z", b"X")]


def kill_uid(uid: int, rounds: int = 50) -> bool:
    """SIGKILLs every live process of ``uid`` (repeatedly, to win against forks). True if none
    is left."""
    for _ in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            return True
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
    return not _pids_of_uid(uid)


def _killpg(pgid: int) -> None:
    if pgid > 0:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


_subreaper = False


def _become_subreaper() -> None:
    """Orphans of sandboxed programs are re-parented to this process (not to a PID 1 that may
    never reap them: unreaped zombies of the sandbox uid would count against RLIMIT_NPROC)."""
    global _subreaper
    if not _subreaper:
        _subreaper = True
        try:
            isolation.libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except Exception:  # noqa: BLE001
            pass


def _reap_orphans(uid: int) -> None:
    """Reaps zombie children of this process that ran as the sandbox uid (never others)."""
    me = os.getpid()
    for pid, state, ppid in _procs_of_uid(uid):
        if state in (b"Z", b"X") and ppid == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:
                pass


def cleanup_after_worker(worker_pid: int, pgid: int) -> None:
    """Used by the pool after it SIGKILLed a worker: kills what that worker's sandbox started."""
    _killpg(pgid)
    if os.geteuid() == 0:
        kill_uid(sandbox_uid(worker_pid))
    for d in glob.glob(os.path.join(tempfile.gettempdir(), f"rjx-sandbox-{worker_pid}-*")):
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- configuration

@dataclasses.dataclass
class _Config:
    python: str
    netns: bool
    mountns: bool
    drop_uid: bool
    userns: bool = False  # unprivileged: a user namespace grants the right to make the others


def _make_preexec(cfg: _Config, uid: int, limits: dict, workdir: str):
    isolation.libc()  # loaded here, not in the forked child

    def preexec():
        isolation.set_rlimits(limits)
        isolation.unshare(cfg.netns, cfg.mountns, cfg.userns)
        if cfg.mountns:
            # The work dir (our cwd) is the only real directory the program can write to.
            isolation.private_tmp(workdir)
        if cfg.drop_uid:
            isolation.drop_to(uid)
        isolation.no_new_privs()
        isolation.die_with_parent()

    return preexec


def _probe_one(cfg: _Config) -> bool:
    try:
        res = run_program("import socket, json, collections, heapq\nprint('ok')", b"",
                          timeout_s=10.0, _cfg=cfg)
    except Exception:  # noqa: BLE001
        return False
    return res.returncode == 0 and res.stdout.strip() == b"ok"


def get_config() -> _Config:
    """Probes (once per process) which isolation layers work here."""
    global _config
    if _config is not None:
        return _config
    root = os.geteuid() == 0
    pythons = [sys.executable] + [p for p in _PYTHON_CANDIDATES if os.path.exists(p)]
    candidates = []
    if root:
        candidates += [_Config(p, True, True, True) for p in pythons]
        candidates += [_Config(sys.executable, True, True, False),
                       _Config(sys.executable, True, False, False)]
    else:
        candidates += [_Config(sys.executable, True, True, False, userns=True),
                       _Config(sys.executable, True, False, False, userns=True)]
    candidates.append(_Config(sys.executable, False, False, False))
    for i, cfg in enumerate(candidates):
        if _probe_one(cfg) or i == len(candidates) - 1:
            _config = cfg
            break
    missing = [name for name, on in (("network namespace", _config.netns),
                                     ("private /tmp (mount namespace)", _config.mountns),
                                     ("unprivileged sandbox uid", _config.drop_uid)) if not on]
    if missing:
        log.warning("code sandbox running WITHOUT: %s (see docs/verifiers.md)", ", ".join(missing))
    return _config


def capabilities() -> dict:
    cfg = get_config()
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class RunResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    elapsed_s: float


def run_program(source: str, stdin: bytes = b"", *, timeout_s: float = 5.0,
                memory_mb: int = 1024, max_output_bytes: int = 1 << 20,
                max_file_bytes: int = 16 << 20, max_open_files: int = 64,
                max_processes: int = 32, _cfg: _Config | None = None) -> RunResult:
    """Runs ``source`` as a Python program in the sandbox; never raises for program behaviour."""
    cfg = _cfg or get_config()
    uid = sandbox_uid()
    if cfg.drop_uid:
        _become_subreaper()
    cpu = int(math.ceil(timeout_s)) + 1
    limits = {
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_AS: (memory_mb << 20, memory_mb << 20),
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: (max_file_bytes, max_file_bytes),
        resource.RLIMIT_NOFILE: (max_open_files, max_open_files),
        resource.RLIMIT_NPROC: (max_processes, max_processes),
    }
    workdir = tempfile.mkdtemp(prefix=f"rjx-sandbox-{os.getpid()}-")
    proc = None
    t0 = time.monotonic()
    out, err = bytearray(), bytearray()
    timed_out = exceeded = False
    try:
        prog = os.path.join(workdir, "main.py")
        with open(prog, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(source)
        os.chmod(prog, 0o644)
        if cfg.drop_uid:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir, "PYTHONIOENCODING": "utf-8"}
        proc = subprocess.Popen(
            [cfg.python, "-I", "main.py"], cwd=workdir, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_make_preexec(cfg, uid, limits, workdir), close_fds=True)
        _publish_pgid(proc.pid)
        deadline = t0 + timeout_s
        sel = selectors.DefaultSelector()
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe, selectors.EVENT_READ)
        data = memoryview(stdin)
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        exited_at = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if proc.poll() is not None:
                if exited_at is None:
                    exited_at = now
                if not sel.get_map() or now - exited_at > 0.05:
                    break
            if not sel.get_map():
                time.sleep(min(0.005, deadline - now))
                continue
            for key, _ in sel.select(min(deadline - now, 0.05)):
                fobj = key.fileobj
                if fobj is proc.stdin:
                    try:
                        k = os.write(fobj.fileno(), data[:65536])
                        data = data[k:]
                    except BlockingIOError:
                        k = 0
                    except OSError:
                        data = data[:0]
                    if not data:
                        sel.unregister(fobj)
                        fobj.close()
                    continue
                try:
                    chunk = os.read(fobj.fileno(), 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fobj)
                    continue
                buf = out if fobj is proc.stdout else err
                buf += chunk
                if len(out) + len(err) > max_output_bytes:
                    exceeded = True
            if exceeded:
                break
        sel.close()
    finally:
        if proc is not None:
            _killpg(proc.pid)
            if cfg.drop_uid:
                kill_uid(uid)
            try:
                proc.kill()
            except OSError:
                pass
            proc.wait()
            _publish_pgid(0)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
            if cfg.drop_uid:
                _reap_orphans(uid)
        shutil.rmtree(workdir, ignore_errors=True)
    return RunResult(proc.returncode if proc else None, bytes(out[:max_output_bytes]),
                     bytes(err[:max_output_bytes]), timed_out, exceeded, time.monotonic() - t0)
