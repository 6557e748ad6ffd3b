"""Isolated verifier workers (the ``math`` verifier's): a verifier that behaves like a
subverted parser (tests/verifier_probes.py) cannot write outside, read root's or the trainer's
private files, reach the network, signal other processes, fork much, hand the trainer a
forged reward or pickle, or stall it; what it started dies with it."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from reason_jax import verifiers
from reason_jax.verifiers import VerifierPool, isolation
from reason_jax.verifiers.base import info_from_outcome
from test_verifiers_bridge import _alive
from verifier_probes import hostile

ROOT = os.geteuid() == 0
MARK = "rjx_isolation_escape_marker"


@pytest.fixture(scope="module")
def pool():
    verifiers.register("hostile", hostile, isolated=True)
    with VerifierPool(num_workers=2) as p:
        p.isolation("hostile")
        yield p


@pytest.fixture
def victim():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _probe(pool, action, record=None, timeout_s=5.0):
    info = pool.score("hostile", [action], [record or {}], timeout_s=timeout_s).infos[0]
    return info, (json.loads(info["detail"]) if info["status"] == "wrong" else None)


def _uid_procs(uid):
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid and _alive(name):
                out.append(int(name))
        except OSError:
            pass
    return out


def test_layers(pool):
    caps = pool.isolation("hostile")
    _, me = _probe(pool, "whoami")
    assert me["active"] and me["pid"] in pool.worker_pids
    if ROOT:
        assert caps["uid"] == isolation.sandbox_uid(me["pid"]) == me["uid"] == me["euid"]
        assert me["groups"] == [] and caps["netns"] and caps["mountns"]
    if caps["mountns"]:
        assert me["cwd"] == "/tmp"


def test_no_writes_outside(pool):
    paths = [f"/tmp/{MARK}", f"/var/tmp/{MARK}", f"/dev/shm/{MARK}", f"{os.getcwd()}/{MARK}"]
    _probe(pool, "write", {"paths": paths})
    if pool.isolation("hostile")["mountns"]:
        assert not any(os.path.exists(p) for p in paths[:3])
    if ROOT:  # the checkout is not world-writable
        assert not os.path.exists(paths[3])


@pytest.mark.skipif(not ROOT, reason="needs root (dedicated sandbox uid)")
def test_no_private_reads_no_signals(pool, victim):
    _, got = _probe(pool, "read", {"paths": ["/etc/shadow", f"/proc/{os.getpid()}/environ"]})
    assert got["results"] == ["PermissionError"] * 2, got
    _, got = _probe(pool, "kill", {"victim": victim.pid})
    assert got["kill"] == "PermissionError" and victim.poll() is None


def test_no_network(pool):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        _, got = _probe(pool, "net", {"port": srv.getsockname()[1]})
        if pool.isolation("hostile")["netns"]:
            assert got["connect"] != "done"
    finally:
        srv.close()


def test_limits(pool):
    _, got = _probe(pool, "memory")
    assert got["alloc"] == "MemoryError"
    if ROOT:
        _, got = _probe(pool, "fork")
        assert 0 < got["forked"] < 8  # RLIMIT_NPROC=8 counts the worker's own threads too
        assert len(_uid_procs(isolation.sandbox_uid(got["pid"]))) == 1 + got["forked"]


def test_cpu_limit_without_the_pool_deadline():
    """With the pool's deadline out of the way, the kernel's per-sample RLIMIT_CPU ends a
    worker that spins: about timeout_s + 2 CPU seconds."""
    verifiers.register("hostile", hostile, isolated=True)
    with VerifierPool(num_workers=1, kill_grace_s=120.0) as p:
        p.isolation("hostile")
        t = time.monotonic()
        info = p.score("hostile", ["spin"], [{}], timeout_s=0.5).infos[0]
        assert info["status"] == "crash" and "died" in info["detail"]
        assert time.monotonic() - t < 60.0


def test_forged_reward_and_replies():
    opts = {"correct_reward": 1.0, "failure_reward": 0.0}
    assert info_from_outcome(["r", 1e9], opts, isolated=True)["status"] == "crash"
    assert info_from_outcome(["r", 0.5], opts, isolated=False)["reward"] == 0.5
    for bad in (None, [], ["v"], ["v", "ok"], ["v", "yes", 1, 1, None, ""], ["f", "ok", "x"],
                ["v", "ok", 1.0, True, {"x": 1}, ""], "vok", 7):
        assert info_from_outcome(bad, opts, isolated=True)["status"] == "crash", bad
    info = info_from_outcome(["v", "ok", 5.0, True, "x" * 10_000, ""], opts, isolated=True)
    assert info["reward"] == 1.0 and len(info["extracted"]) < 300


def test_forged_progress_cannot_stall_or_redirect_kills(pool, victim):
    t = time.monotonic()
    info, _ = _probe(pool, "forge_progress", {"victim": victim.pid}, timeout_s=1.0)
    assert time.monotonic() - t < 1.0 + pool.kill_grace_s + 1.0
    assert info["status"] == "timeout"
    assert victim.poll() is None  # its process group was named, but only the worker's uid dies
    _, me = _probe(pool, "whoami")  # a replacement serves the next sample
    assert me["active"]


@pytest.mark.skipif(not ROOT, reason="needs root (dedicated sandbox uid)")
def test_what_a_worker_started_dies_with_it():
    verifiers.register("hostile", hostile, isolated=True)
    with VerifierPool(num_workers=1) as p:
        _, got = _probe(p, "fork")
        uid = isolation.sandbox_uid(got["pid"])
        assert got["forked"] > 0 and len(_uid_procs(uid)) == 1 + got["forked"]
    assert _uid_procs(uid) == []


def test_worker_start_failure_is_reported(tmp_path):
    (tmp_path / "broken_verifier_mod.py").write_text(
        "def verify(c, r, **o):\n    return 1.0\n"
        "def _fail():\n    raise ImportError('no engine here')\n"
        "verify.prepare = _fail\n")
    sys.path.insert(0, str(tmp_path))
    try:
        verifiers.register("broken", "broken_verifier_mod:verify", isolated=True)
        with VerifierPool(num_workers=1) as p:
            with pytest.raises(RuntimeError, match="no engine here"):
                p.score("broken", ["x"], [{}], timeout_s=2.0)
    finally:
        sys.path.remove(str(tmp_path))
