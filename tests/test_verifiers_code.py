"""The code verifier and its sandbox: each adversarial program ends within timeout + 1 s,
with the right status, leaving no process and no file behind."""

import glob
import os
import time

import pytest

from reason_jax.verifiers import sandbox
from reason_jax.verifiers.code_verifier import extract_program, verify

TIMEOUT = 1.0
DOUBLE = {"tests": [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10"}]}
MARK = "rjx_sandbox_escape_marker"


def _sandbox_procs():
    """Live processes running under any sandbox uid, except isolated verifier workers (and
    what they started) of pools that are meant to be alive, e.g. another run's math pool:
    those run under the uid of a live process of that same uid (the worker's own)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
                if uid >= sandbox.SANDBOX_UID_BASE:
                    owner = f"/proc/{uid - sandbox.SANDBOX_UID_BASE}"
                    if os.path.exists(owner) and os.stat(owner).st_uid == uid:
                        continue
                    with open(f"/proc/{name}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                            out.append(int(name))
            except (OSError, IndexError):
                pass
    return out


def _children_of_self():
    out = []
    me = str(os.getpid())
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[1].decode() == me and fields[0] not in (b"Z", b"X"):
                    out.append(int(name))
            except (OSError, IndexError):
                pass
    return out


@pytest.fixture
def clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_tmp = set(glob.glob("/tmp/*"))
    # Children alive before the test (a session fixture's server, say) are not its leaks.
    before_children = set(_children_of_self())
    yield tmp_path
    assert not _sandbox_procs(), "sandboxed processes left behind"
    assert not set(_children_of_self()) - before_children, "child processes left behind"
    assert not glob.glob("/tmp/rjx-sandbox-*") or set(glob.glob("/tmp/rjx-sandbox-*")) <= before_tmp
    assert not glob.glob(f"/tmp/{MARK}*") and not glob.glob(f"/dev/shm/{MARK}*")
    assert not os.listdir(tmp_path)


def _run(program, record=DOUBLE, timeout=TIMEOUT, **kw):
    t = time.monotonic()
    v = verify(program, record, timeout_s=timeout, **kw)
    dt = time.monotonic() - t
    assert dt < timeout + 1.0, dt
    return v


# Programs that should pass get room for several interpreter start-ups on a loaded machine
# (the budget is shared by all of a sample's cases); the adversarial ones keep TIMEOUT.
PASSING = 10.0


def test_extract_program():
    assert extract_program("hi\n```python\nprint(1)\n```\nbye") == ("print(1)\n", True)
    assert extract_program("print(2)") == ("print(2)", False)
    assert extract_program("```\nx = 1\n```\n```python\ny = 2\n```") == ("y = 2\n", True)
    for evil in ["```" * 100_000, "a```" * 30_000, "```python\n" * 50_000]:
        t = time.perf_counter()
        extract_program(evil)
        assert time.perf_counter() - t < 0.5


def test_correct_and_wrong(clean):
    v = _run("```python\nn = int(input())\nprint(n * 2)\n```", timeout=PASSING)
    assert v.status == "ok" and v.fraction == 1.0 and v.format_ok
    v = _run("n = int(input())\nprint(n * 2 if n == 2 else 0)", timeout=PASSING)
    assert v.status == "wrong" and v.fraction == 0.5
    v = _run("print(4)", all_or_nothing=True)
    assert v.status == "wrong"


def test_assert_style(clean):
    rec = {"test_code": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}
    assert _run("def add(a, b):\n    return a + b", rec, timeout=PASSING).status == "ok"
    assert _run("def add(a, b):\n    return a - b", rec, timeout=PASSING).status == "wrong"
    both = dict(DOUBLE, test_code="assert f(3) == 6")
    prog = "import sys\ndef f(n):\n    return 2 * n\ndata = sys.stdin.read().split()\nif data:\n    print(f(int(data[0])))"
    v = _run(prog, both, timeout=PASSING)
    assert v.status == "ok" and v.fraction == 1.0


def test_infinite_loop(clean):
    v = _run("while True:\n    pass")
    assert v.status == "timeout" and v.fraction == 0.0


def test_fork_bomb(clean):
    prog = ("import os\n"
            "while True:\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            os.setsid()\n"
            "    except OSError:\n"
            "        pass\n")
    v = _run(prog)
    assert v.status == "timeout"


def test_sleeping_children_are_killed(clean):
    prog = ("import os, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
            "print(int(input()) * 2)\n")
    v = _run(prog)  # exits at once, its detached child must not survive
    assert v.status == "ok"


def test_memory_bomb(clean):
    v = _run("x = bytearray(10 * 2**30)\nprint(int(input()) * 2)")
    assert v.status == "wrong"


def test_large_file(clean):
    one = {"tests": DOUBLE["tests"][:1]}
    v = _run("with open('big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'0' * (1 << 20))\n"
             "print(int(input())*2)", one)
    assert v.status in ("wrong", "timeout") and v.fraction == 0.0


def test_large_output(clean):
    v = _run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert v.status in ("wrong", "timeout") and v.fraction == 0.0


def test_cannot_write_outside_workdir(clean):
    prog = (f"for p in ['/tmp/{MARK}', '/dev/shm/{MARK}', '/var/tmp/{MARK}', '{clean}/{MARK}']:\n"
            "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
            "open('inside.txt', 'w').write('fine')\nprint(int(input()) * 2)\n")
    v = _run(prog)
    assert v.status == "ok"
    assert not os.path.exists(f"/var/tmp/{MARK}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (dedicated sandbox uid)")
def test_cannot_read_private_files(clean):
    secret = clean / "secret.txt"
    secret.write_text("hidden")
    os.chmod(secret, 0o600)
    prog = (f"import sys\nfor p in ['/etc/shadow', '{secret}']:\n"
            "    try:\n        open(p).read(); print('LEAK', p)\n    except OSError:\n        pass\n"
            "print(int(input()) * 2)\n")
    v = _run(prog)
    assert v.status == "ok", v.detail
    secret.unlink()


def test_no_network(clean):
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    prog = ("import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
            "print(int(input()) * 2)\n")
    try:
        caps = sandbox.capabilities()
        v = _run(prog)
        if caps["netns"]:
            assert v.status == "wrong", v.detail
    finally:
        srv.close()


def test_closed_stdout_and_sleep(clean):
    v = _run("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(30)")
    assert v.status == "timeout"


def test_format_error(clean):
    assert verify("   ", DOUBLE).status == "format_error"


FORK_BOMB = ("import os, time\n"
             "while True:\n"
             "    try:\n"
             "        if os.fork() == 0:\n"
             "            os.setsid()\n"
             "            time.sleep(60)\n"
             "    except OSError:\n"
             "        pass\n")


@pytest.mark.parametrize("kill_grace_s", [0.5, -0.5])
def test_adversarial_batch_through_pool(clean, kill_grace_s):
    """kill_grace_s < 0 makes the parent kill the worker *during* the sandbox run, exercising
    the bridge's own cleanup of what the worker's sandbox started."""
    from reason_jax.verifiers import VerifierPool
    progs = ["while True:\n    pass", FORK_BOMB, "print(int(input()) * 2)",
             "import os, time\nos.close(1)\ntime.sleep(30)"]
    with VerifierPool(num_workers=2, kill_grace_s=kill_grace_s) as pool:
        pool.score("code", ["print(1)"], [DOUBLE], timeout_s=5.0)  # warm (and probe)
        t = time.monotonic()
        res = pool.score("code", progs, [{"tests": DOUBLE["tests"][:1]}] * 4, timeout_s=TIMEOUT)
        assert time.monotonic() - t < 2 * (TIMEOUT + 1.0)  # 4 samples, 2 workers, 3 hang
        assert [i["status"] for i in res.infos] == ["timeout", "timeout", "ok", "timeout"]
        assert res.rewards == [0.0, 0.0, 1.0, 0.0]
    time.sleep(0.1)
