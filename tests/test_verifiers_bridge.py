"""The verifier bridge: parallel scoring with parent-enforced deadlines.

`flaky` is a test-only verifier that workers import by path ("test_verifiers_helpers:flaky").
"""

import time

import pytest

from reason_jax import verifiers
from reason_jax.verifiers import VerifierPool
from test_verifiers_helpers import flaky


@pytest.fixture(scope="module")
def pool():
    verifiers.register("flaky", flaky)
    with VerifierPool(num_workers=4) as p:
        p.score("flaky", ["ok"] * 8, [{}] * 8, timeout_s=10.0)  # warm: the loop keeps its pool
        yield p


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_batch_with_hangs_and_crashes(pool):
    timeout = 1.0
    comps = ["ok"] * 64
    for i in (5, 30):
        comps[i] = "hang"
    comps[47] = "sleep"
    for i in (1, 12, 40, 63):
        comps[i] = "crash"
    comps[20] = "exit"
    comps[50] = "die"
    old_pids = pool.worker_pids
    t = time.monotonic()
    res = pool.score("flaky", comps, [{}] * 64, timeout_s=timeout)
    dt = time.monotonic() - t
    assert dt < timeout + 1.0, dt
    assert len(res.rewards) == 64
    for i, c in enumerate(comps):
        want = {"hang": "timeout", "sleep": "timeout", "crash": "crash", "exit": "crash",
                "die": "crash", "ok": "ok"}[c]
        assert res.infos[i]["status"] == want, (i, c, res.infos[i])
        assert res.rewards[i] == (1.0 if c == "ok" else 0.0)
    assert res.status_counts == {"ok": 55, "wrong": 0, "format_error": 0, "timeout": 3, "crash": 6}
    time.sleep(0.05)
    killed = [p for p in old_pids if p not in pool.worker_pids]
    assert len(killed) >= 3 and not any(_alive(p) for p in killed)
    # The pool keeps working for the next batch.
    t = time.monotonic()
    res = pool.score("flaky", ["ok"] * 64, [{}] * 64, timeout_s=timeout)
    assert res.rewards == [1.0] * 64 and time.monotonic() - t < timeout + 1.0


def test_register_by_path_and_batch_timeout(pool):
    # 2 s: replacement workers of the previous test may still be starting on a busy machine.
    res = pool.score("test_verifiers_helpers:flaky", ["ok", "sleep", "ok"], [{}] * 3,
                     timeout_s=30.0, batch_timeout_s=2.0)
    assert [i["status"] for i in res.infos] == ["ok", "timeout", "ok"]
    assert res.elapsed_s < 3.0


def test_unknown_verifier_and_bad_input(pool):
    with pytest.raises(KeyError):
        pool.score("no-such-verifier", ["x"], [{}])
    with pytest.raises(ValueError):
        pool.score("flaky", ["x", "y"], [{}])
    assert pool.score("flaky", [], []).rewards == []
    res = pool.score("no_such_module_xyz:fn", ["x"], [{}], timeout_s=2.0)
    assert res.infos[0]["status"] == "crash"


def test_builtin_verifiers_through_pool(pool):
    recs = [{"numbers": [3, 7, 9], "target": 90}] * 4
    res = pool.score("countdown", ["(3+7)*9", "3+7+9", "9**9**9", "<answer>9*(3+7)</answer>"],
                     recs, timeout_s=2.0, correct_reward=1.0, wrong_reward=-1.0,
                     format_reward=0.1)
    assert [i["status"] for i in res.infos] == ["ok", "wrong", "format_error", "ok"]
    assert res.rewards == pytest.approx([1.1, -0.9, -1.0, 1.1])
    assert res.metrics()["verifier/ok_frac"] == 0.5
    res = pool.score("math", [r"\boxed{\frac{1}{2}}", "Answer: 3"], [{"answer": "0.5"}] * 2)
    assert res.rewards == [1.0, 0.0]


def test_module_level_score():
    res = verifiers.score("countdown", ["(3+7)*9"], [{"numbers": [3, 7, 9], "target": 90}],
                          timeout_s=2.0)
    assert res.rewards == [1.0]
    verifiers.close_default_pool()


def test_inline_pool():
    with VerifierPool(num_workers=0) as p:
        res = p.score("countdown", ["(3+7)*9"], [{"numbers": [3, 7, 9], "target": 90}])
        assert res.rewards == [1.0]
        with pytest.raises(ValueError, match="isolated"):  # math never runs in-process
            p.score("math", [r"\boxed{2}"], [{"answer": "2"}])


def test_measure_costs(pool, capsys):
    """Per-sample scoring cost (printed; run with -s to see it)."""
    n = 256
    rec = [{"numbers": [3, 7, 9, 30], "target": 60}] * n
    comps = ["(3+7)*9-30", "30+9+7+3", "(30-9)*3+7", "garbage"] * (n // 4)
    pool.score("countdown", comps, rec, timeout_s=2.0)  # warm
    t = time.perf_counter()
    for _ in range(5):
        pool.score("countdown", comps, rec, timeout_s=2.0)
    cd_batch = (time.perf_counter() - t) / 5
    mcomps = [r"The answer is \boxed{\dfrac{3}{4}}", r"\boxed{0.75}", "Answer: 1,000", "none"] * (n // 4)
    mrec = [{"answer": r"\frac{3}{4}"}] * n
    pool.score("math", mcomps, mrec, timeout_s=2.0)  # warm: starts the isolated workers
    t = time.perf_counter()
    for _ in range(5):
        pool.score("math", mcomps, mrec, timeout_s=2.0)
    math_batch = (time.perf_counter() - t) / 5
    ccomps = ["```python\nprint(int(input()) * 2)\n```"] * 8
    crec = [{"tests": [{"input": "2", "output": "4"}]}] * 8
    t = time.perf_counter()
    pool.score("code", ccomps, crec, timeout_s=5.0)
    code_batch = time.perf_counter() - t
    with capsys.disabled():
        print(f"\n[verifier cost] countdown: {cd_batch * 1e3:.1f} ms / batch of {n} "
              f"({cd_batch / n * 1e6:.1f} us/sample); math: {math_batch * 1e3:.1f} ms / batch "
              f"of {n} ({math_batch / n * 1e6:.1f} us/sample); code (1 test): "
              f"{code_batch * 1e3:.0f} ms / batch of 8 ({code_batch / 8 * 1e3:.1f} ms/sample, "
              f"{len(pool.worker_pids)} workers)")
    assert cd_batch < 0.5


def test_workers_die_with_parent():
    import os
    import signal
    import subprocess
    import sys
    code = ("import time\nfrom reason_jax.verifiers import VerifierPool\n"
            "p = VerifierPool(2)\np.isolation('math')\n"  # plain and isolated workers
            "print(*p.worker_pids, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_bare_float_counts_as_correct_only_at_full_credit():
    """Graded rewards (a verifier returning a bare float): the reward passes through, but only
    full credit is "ok", so accuracy (and dynamic sampling's accuracy filter) stays meaningful."""
    from reason_jax.verifiers.base import compose

    half, full = compose(0.5, {}), compose(1.0, {})
    assert (half["status"], half["reward"]) == ("wrong", 0.5)
    assert (full["status"], full["reward"]) == ("ok", 1.0)
    assert compose(0.9, {"correct_reward": 0.9})["status"] == "ok"
