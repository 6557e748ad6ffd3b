"""Kernel isolation layers, shared by the code sandbox and by isolated verifier workers.

The code sandbox (:mod:`.sandbox`) applies them in the child of each untrusted program before
it execs. An isolated worker (the ``math`` verifier's; see :func:`isolate_worker`) applies
them to itself once at start-up, after loading its trusted code and before it reads any
untrusted input, then serves many samples. Layers:

* a private network namespace: only a down loopback, so no network at all;
* a private mount namespace with fresh 16 MiB tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm``;
* as root, a dedicated unprivileged uid (``SANDBOX_UID_BASE + pid``): root-only files become
  unreadable and everything the process starts can be found by uid and killed; without root,
  the namespaces are made inside a new user namespace that maps only our own uid;
* ``setrlimit`` (address space, CPU, open files, processes, core dumps) and
  ``PR_SET_NO_NEW_PRIVS`` (setuid binaries cannot raise privileges).

``unshare`` is all-or-nothing, so a failed attempt leaves the process as it was and the next
weaker combination can be tried. This module is stdlib-only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import signal

SANDBOX_UID_BASE = 0x6A000000  # 1778384896: far above any real uid; + pid (< 2**22)
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

_libc = None
_active = False


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def sandbox_uid(pid: int | None = None) -> int:
    """The unprivileged uid of the sandbox started by (or being) process ``pid``."""
    return SANDBOX_UID_BASE + (os.getpid() if pid is None else pid)


def set_rlimits(limits: dict) -> None:
    for res, val in limits.items():
        resource.setrlimit(res, val)


def unshare(netns: bool, mountns: bool, userns: bool) -> None:
    """New network / mount namespaces (inside a new user namespace if ``userns``: the way an
    unprivileged process gets them). Must run single-threaded. Raises OSError."""
    flags = (CLONE_NEWNET if netns else 0) | (CLONE_NEWNS if mountns else 0)
    if not flags:
        return
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if userns:
        flags |= CLONE_NEWUSER
    if libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")
    if userns:  # map our own uid/gid, so files can still be created in the new namespaces
        for name, text in (("setgroups", "deny"), ("uid_map", f"{outer_uid} {outer_uid} 1"),
                           ("gid_map", f"{outer_gid} {outer_gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


def private_tmp(workdir: str | None = None) -> None:
    """In a new mount namespace: fresh tmpfs over the shared temp dirs (discarded with the
    namespace). ``workdir`` (the current directory, hidden by the new tmpfs if it lies under
    one of them) is bind-mounted back at its own path and becomes the cwd again."""
    lc = libc()
    if lc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "make-rprivate failed")
    for d in TMP_DIRS:
        if os.path.isdir(d):
            if lc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                        b"size=16m,mode=1777") != 0:
                raise OSError(ctypes.get_errno(), "tmpfs mount failed")
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        if lc.mount(b"/proc/self/cwd", workdir.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind mount failed")
        os.chdir(workdir)


def drop_to(uid: int) -> None:
    """Irreversibly becomes ``uid`` (and group ``uid``), with no supplementary groups."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def no_new_privs() -> None:
    libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def die_with_parent() -> None:
    """SIGKILL when the parent *thread* exits: right for a sandboxed program's child (its
    worker's main thread started it), wrong for a pool worker (started from whatever thread
    called ``score``; workers watch their parent's pid instead)."""
    libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------- isolated workers

def worker_limits(memory_mb: int) -> dict:
    """Limits of an isolated worker for its whole life (CPU is limited per sample by
    :func:`limit_cpu`). No RLIMIT_FSIZE: it would also cap writes to an inherited stderr that
    is redirected to a large log file, and the worker has nowhere else to write."""
    lim = {
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_AS: (memory_mb << 20, memory_mb << 20),
        resource.RLIMIT_NOFILE: (64, 64),
    }
    if os.geteuid() == 0:  # only under its own uid does the count start at this worker
        lim[resource.RLIMIT_NPROC] = (8, 8)
    return lim


def isolate_worker(memory_mb: int) -> dict:
    """Applies every layer that works here to the calling process, which must be
    single-threaded (user namespaces require it). Returns what is on: ``netns``, ``mountns``
    (private tmp dirs), ``uid`` (the sandbox uid or None), ``memory_mb``."""
    global _active
    set_rlimits(worker_limits(memory_mb))
    root = os.geteuid() == 0
    caps = {"netns": False, "mountns": False, "uid": None, "memory_mb": memory_mb}
    for netns, mountns in ((True, True), (True, False)):
        try:
            unshare(netns, mountns, userns=not root)
        except OSError:
            continue
        caps["netns"] = True
        if mountns:
            try:
                private_tmp()
                caps["mountns"] = True
            except OSError:
                pass
        break
    os.chdir("/tmp" if caps["mountns"] else "/")
    if root:
        caps["uid"] = sandbox_uid()
        drop_to(caps["uid"])
        # A uid change without exec leaves the process non-dumpable: its /proc entries would
        # stay root's, and the parent finds sandbox processes to kill by their /proc owner.
        libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    no_new_privs()
    _active = True
    return caps


def limit_cpu(timeout_s: float) -> None:
    """Per-sample CPU limit of an isolated worker: SIGXCPU (which kills it) once this sample
    used about ``timeout_s + 2`` CPU seconds (the limit is whole seconds of the process's
    total). The hard limit stays unlimited so a long-lived worker can set it again for the
    next sample; the pool's wall-clock deadline comes first and is the binding one."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(used.ru_utime + used.ru_stime + timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def active() -> bool:
    """True in a worker process that has isolated itself (:func:`isolate_worker`)."""
    return _active
