"""The math verifier (math-verify in isolated workers) and the countdown verifier, including
the adversarial (injection) suites."""

import json
import os
import subprocess
import sys
import time

import pytest

from reason_jax import verifiers
from reason_jax.verifiers import VerifierPool, answer_formats
from reason_jax.verifiers.countdown import verify as countdown_verify
from reason_jax.verifiers.math_verifier import as_answer, verify as math_verify

ENGINE_MODULES = ("sympy", "math_verify", "latex2sympy2_extended", "antlr4", "mpmath")
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2) as p:
        p.isolation("math")  # warm: the training loop keeps its pool
        yield p


def _statuses(pool, completions, golds, **options):
    res = pool.score("math", completions, [{"answer": g} for g in golds],
                     timeout_s=options.pop("timeout_s", 10.0), **options)
    return [i["status"] for i in res.infos], res


def test_no_jax_import():
    assert "reason_jax.verifiers" in sys.modules
    code = "import sys, reason_jax.verifiers; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trainer_never_imports_the_engine():
    """A trainer-like process (JAX imported, threads running) scores math through a pool and
    the default pool: afterwards nothing of sympy or math-verify is in its sys.modules."""
    code = (
        "import sys, jax, jax.numpy as jnp\n"
        "jnp.ones(3).block_until_ready()\n"
        "from reason_jax import verifiers\n"
        "with verifiers.VerifierPool(1) as p:\n"
        "    r = p.score('math', [r'so \\boxed{\\frac{1}{2}}'], [{'answer': '0.5'}])\n"
        "assert r.rewards == [1.0], r.infos\n"
        "assert verifiers.get('math')(r'\\boxed{3}', {'answer': '3'})['status'] == 'ok'\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({ENGINE_MODULES!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_refuses_to_run_in_process():
    # Only what this test loads counts: another test may have imported torch, which loads
    # sympy (the subprocess test above checks a clean process).
    before = {m.split(".")[0] for m in sys.modules}
    with pytest.raises(RuntimeError, match="isolated workers"):
        math_verify(r"\boxed{1}", {"answer": "1"})
    with VerifierPool(num_workers=0) as inline, pytest.raises(ValueError, match="isolated"):
        inline.score("math", [r"\boxed{1}"], [{"answer": "1"}])
    assert not ({m.split(".")[0] for m in sys.modules} - before) & set(ENGINE_MODULES)


# What the old bounded parser missed and math-verify handles (issue 13), and the basics.
PAIRS = [
    (r"so the answer is \boxed{\frac{1}{2}}.", "0.5", "ok"),
    (r"\boxed{0.5}", r"\frac{1}{2}", "ok"),
    (r"\boxed{\dfrac{3}{4}}", "0.75", "ok"),
    (r"\boxed{\cfrac{3}{4}}", r"\frac{3}{4}", "ok"),
    (r"\boxed{\tfrac34}", r"\frac{3}{4}", "ok"),
    (r"\boxed{\boxed{7}}", "7", "ok"),
    (r"\boxed{3} no wait \boxed{5}", "5", "wrong"),        # math-verify: the set {3, 5}
    (r"\boxed{3}, \boxed{5}", r"\{3, 5\}", "ok"),
    (r"$\boxed{3}$ no wait $\boxed{5}$", "5", "ok"),        # one box per block: the last
    (r"\boxed{\frac{1}{3}}", "0.33", "wrong"),
    ("The total is 1,000.99", "1000.99", "ok"),           # thousands separator
    ("The total is 1000,99", "1000.99", "ok"),            # decimal comma
    (r"\boxed{7,425,000}", "7425000", "ok"),
    (r"$\frac{1}{3}\text{meters}$", r"\frac{1}{3}", "ok"),  # units
    (r"The distance is $\boxed{125\textnormal{ miles}}.$", "125", "ok"),
    (r"\boxed{50\%}", "0.5", "ok"),
    (r"$x \geq 5$", r"5 \leq x", "ok"),                   # relations
    (r"The solution is $x != 5$", r"x \neq 5", "ok"),
    (r"The solution is $x \leq 5$", r"x \geq 5", "wrong"),
    (r"$[0,9)$", "(0,9)", "wrong"),                        # intervals stay different
    (r"$(0,9)$", "(0,9)", "ok"),
    (r"$x = 5+5+1 = 11$", "11", "ok"),                     # chains: the last value
    (r"Answer \[ 9 \]", "9", "ok"),                        # the last display-math block
    ("Answer $$ 9 $$", "9", "ok"),
    (r"Answer \( 9 \)", "9", "ok"),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", "ok"),
    (r"\boxed{x^2+1}", "(x+1)^2", "wrong"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", "ok"),
    (r"\boxed{3\sqrt{3}}", "3", "wrong"),                  # a bare gold is one LaTeX answer
    (r"\boxed{(1, 2)}", "(1,2)", "ok"),
    (r"\boxed{-\frac{7}{2}}", "-3.5", "ok"),
    (r"\boxed{2^{10}}", "1024", "ok"),
    ("<answer>18</answer>", "18", "ok"),                  # tags: the last block counts
    (r"<answer>3\sqrt{3}</answer> 3", "3", "wrong"),
    ("2 <answer>The answer is 18.</answer>", "18", "ok"),
    ("no answer at all", "1", "format_error"),
    ("", "1", "format_error"),
]


def test_math_pairs(pool):
    got, _ = _statuses(pool, [c for c, _, _ in PAIRS], [g for _, g, _ in PAIRS])
    wrong = [(p, s) for p, s in zip(PAIRS, got) if s != p[2]]
    assert not wrong


def test_demanded_answer_format(pool):
    comps = ["Answer: 5", r"\boxed{5}", "<answer>\\frac{10}{2}</answer>", "work\n#### 5",
             "Answer: $\\frac{10}{2}$ cm", "<answer>5</answer> then \\boxed{4}"]
    for fmt, want in [("answer_line", ["ok", "format_error", "format_error", "format_error",
                                       "ok", "format_error"]),
                      ("boxed", ["format_error", "ok", "format_error", "format_error",
                                 "format_error", "wrong"]),
                      (("answer_tag", "gsm8k"), ["format_error", "format_error", "ok", "ok",
                                                 "format_error", "ok"])]:
        got, res = _statuses(pool, comps, ["5"] * len(comps), answer_format=fmt,
                             format_reward=0.5)
        assert got == want, fmt
        assert [i["components"]["format"] for i in res.infos] == \
            [0.0 if s == "format_error" else 0.5 for s in want]
    # Without a demanded format, the format reward still says whether one was used.
    _, res = _statuses(pool, [r"\boxed{5}", "it is $5$"], ["5", "5"], format_reward=0.5)
    assert res.rewards == [1.5, 1.0]


def test_answer_formats_and_gold_reading():
    find = answer_formats.find
    assert find(r"a \boxed{1} b \boxed{\frac{2}{3}}") == (r"\frac{2}{3}", "boxed")
    assert find("x\nAnswer: 3\n") == ("3", "answer_line")
    assert find("#### 7") == ("7", "gsm8k")
    assert find("<answer> \\boxed{4} </answer> \\boxed{5}") == ("4", "answer_tag")
    assert find(r"\boxed{5} Answer: 4", ("answer_line", "boxed")) == ("4", "answer_line")
    assert find("nothing") == (None, "none")
    with pytest.raises(ValueError):
        find("x", ("latex",))
    assert as_answer(r"3\sqrt{3}") == r"\boxed{3\sqrt{3}}"
    assert as_answer("$[0,1)$") == "$[0,1)$" and as_answer("1,000.5") == "1,000.5"
    assert as_answer(r"\$12.50") == r"\boxed{\$12.50}"
    assert as_answer("the answer is 5") == "the answer is 5"
    assert as_answer(r"x \in [0, 1]") == r"\boxed{x \in [0, 1]}"


def test_reward_composition(pool):
    kw = {"correct_reward": 1.0, "wrong_reward": -1.0, "format_reward": 0.5}
    _, res = _statuses(pool, [r"\boxed{2}", r"\boxed{3}", "no"], ["2", "2", "2"], **kw)
    assert res.rewards == [1.5, -0.5, -1.0]
    assert res.infos[0]["components"] == {"correctness": 1.0, "format": 0.5}
    _, res = _statuses(pool, ["no"], ["2"], wrong_reward=-1.0, format_error_reward=-2.0)
    assert res.rewards == [-2.0]


def test_get_goes_through_the_default_pool():
    try:
        ver = verifiers.get("math")
        assert ver(r"\boxed{4}", {"answer": "4"})["status"] == "ok"
        assert ver(r"\boxed{4}", {"answer": "5"}, timeout_s=5.0)["status"] == "wrong"
    finally:
        verifiers.close_default_pool()
    assert set(verifiers.names()) >= {"math", "countdown", "code"}
    with pytest.raises(KeyError):
        verifiers.get("nope")


def test_bad_gold_is_not_a_reward(pool):
    got, res = _statuses(pool, [r"\boxed{1}"], [""], correct_reward=1.0,
                         wrong_reward=-1.0)
    assert got == ["crash"] and res.rewards == [0.0]


MARK = "rjx_math_escape_marker"
INJECTIONS = [
    # Python and dunder tricks, bare and inside LaTeX (sympy's parse_expr evaluates text).
    rf"\boxed{{__import__('os').system('touch /tmp/{MARK}')}}",
    f"The answer is __import__('os').system('touch /tmp/{MARK}')",
    f"Answer: $__import__('os').system('touch {MARK}')$",
    r"\boxed{\operatorname{__import__}('os').system('id')}",
    rf"\boxed{{\text{{__import__('os').system('touch {MARK}')}}}}",
    "The answer is ().__class__.__base__.__subclasses__()",
    "$().__class__.__mro__[1].__subclasses__()$",
    r"$\mathrm{__builtins__}[\text{'eval'}]('1')$",
    "Final answer: (lambda: __import__('os'))()",
    "answer is exec('import os')",
    "Answer: Symbol('x').__class__.__init__.__globals__",
    # Evaluation bombs: towers, huge factorials and binomials, deep nesting, matrix bombs.
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{10^{10^{10}}}",
    r"$9^{9^{9^{9}}}$",
    r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    r"\boxed{(10^{10})!}",
    r"\boxed{1000000!!}",
    r"\boxed{\binom{10^{10}}{10^5}}",
    r"\boxed{\int_0^1 e^{x^{x^x}} dx}",
    r"\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
    r"\boxed{" + r"\frac{" * 500 + "1" + "}{2}" * 500 + "}",
    r"\boxed{" + r"\begin{pmatrix}" * 200 + "1" + r"\end{pmatrix}" * 200 + "}",
    r"\boxed{\begin{pmatrix}" + r"1 & 2 \\ " * 2000 + r"1 & 2\end{pmatrix}}",
    r"\boxed{\begin{pmatrix}x&1\\1&x\end{pmatrix}^{1000000}}",
    "$" + "1+" * 300_000 + "1$",
    # Size: a 1 MB answer, a 1 MB completion.
    r"\boxed{" + "9" * 1_000_000 + "}",
    "x" * 1_000_000,
    # Odd text.
    "Answer: 1\x00; import os",
    "Answer: \u202e\u0000\ud800\U0001d538 \u2212\u221e",
    r"\boxed{\sqrt{-1}}", r"\boxed{\frac{1}{0}}", r"\boxed{0^{-1}}",
]


def test_math_adversarial(pool, tmp_path, monkeypatch, capsys):
    """Each payload scores 0 (even with a -1 wrong reward: timeouts and crashes get the
    failure reward), none writes a file, the batch ends in bounded time, and the pool keeps
    scoring afterwards."""
    monkeypatch.chdir(tmp_path)
    n = len(INJECTIONS)
    t = time.monotonic()
    res = pool.score("math", INJECTIONS, [{"answer": "0"}] * n, timeout_s=TIMEOUT,
                     wrong_reward=0.0)
    dt = time.monotonic() - t
    assert res.rewards == [0.0] * n, [(i, info) for i, info in enumerate(res.infos)
                                      if info["reward"] != 0.0]
    assert all(i["status"] != "ok" for i in res.infos)
    assert all(len(i["extracted"] or "") < 300 for i in res.infos)
    # Hangs end at TIMEOUT (the worker's timer) or TIMEOUT + grace (the pool kills C code).
    hangs = sum(i["status"] == "timeout" for i in res.infos)
    assert dt < -(-hangs // pool.num_workers) * (TIMEOUT + pool.kill_grace_s) + 15.0, dt
    assert not os.listdir(tmp_path) and not os.path.exists(f"/tmp/{MARK}")
    t = time.monotonic()
    got, _ = _statuses(pool, [r"\boxed{2}"] * 8, ["2"] * 8, timeout_s=TIMEOUT)
    assert got == ["ok"] * 8 and time.monotonic() - t < TIMEOUT + 1.0 + 3.0  # + a restart
    with capsys.disabled():
        print(f"\n[math adversarial] {n} payloads in {dt:.1f} s: "
              f"{dict(res.status_counts)}; {pool.restarts} worker restarts")


def test_deadline_plus_one_second(pool):
    """A hanging sample is decided within its deadline plus one second (the worker's timer
    stops sympy; C code would be killed by the pool at timeout_s + kill_grace_s), and a batch
    within its batch_timeout_s plus one second, however long its samples would take."""
    hangs = [r"\boxed{10^{10^{10}}}", r"\boxed{9^{9^{9^{9}}}}", r"\boxed{(10^{7})!}",
             r"\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}"]
    for h in hangs:
        t = time.monotonic()
        res = pool.score("math", [h], [{"answer": "2"}], timeout_s=TIMEOUT)
        assert res.infos[0]["status"] == "timeout" and time.monotonic() - t < TIMEOUT + 1.0
    t = time.monotonic()
    res = pool.score("math", hangs + [r"\boxed{2}"], [{"answer": "2"}] * 5, timeout_s=30.0,
                     batch_timeout_s=2.0)
    assert time.monotonic() - t < 2.0 + 1.0
    assert res.rewards[:4] == [0.0] * 4


CD = {"numbers": [3, 7, 9], "target": 90}


@pytest.mark.parametrize("completion,expected", [
    ("(3+7)*9", "ok"),
    ("(3+7)*9  \n", "ok"),
    ("9*(7+3)", "ok"),
    ("(3 + 7) * 9 = 90", "ok"),
    ("<answer>(3+7)*9</answer>", "ok"),
    ("let me think\nAnswer: (3+7)*9", "ok"),
    ("3+7+9", "wrong"),                 # wrong value
    ("(3+3)*9", "wrong"),               # reuse / missing number
    ("(3+7)*9*1", "wrong"),             # extra number
    ("(7+3)*9+9-9", "wrong"),           # reuse
    ("90", "wrong"),                    # missing numbers
    ("9**9**9", "format_error"),
    ("9^9^9", "format_error"),
    ("(3+7)*9/4", "wrong"),             # non-exact division
    ("7/(3-3)*9", "wrong"),             # division by zero
    ("__import__('os').system('touch PWNED')", "format_error"),
    ("garbage!!", "format_error"),
    ("", "format_error"),
    ("(" * 10_000 + "3" + ")" * 10_000, "format_error"),
    ("1" * 10_000, "format_error"),
    ("-3+7*9", "format_error"),         # unary minus off by default
    ("(3+7)*9\x00", "format_error"),
])
def test_countdown(completion, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = time.perf_counter()
    v = countdown_verify(completion, CD)
    assert time.perf_counter() - t < 0.1
    assert v.status == expected, (completion, v)
    assert not os.listdir(tmp_path)


def test_countdown_options():
    assert countdown_verify("-3+7*9+30", {"numbers": [3, 7, 9, 30], "target": 90},
                            allow_unary_minus=True).status == "ok"
    assert countdown_verify("(100-4)/8", {"numbers": [100, 4, 8], "target": 12}).status == "ok"
    big = "*".join(["99"] * 60)
    assert countdown_verify(big, {"numbers": [99] * 60, "target": 1}).status == "wrong"


def test_countdown_accepts_every_builtin_solution():
    """Consistency with the built-in task (reason_jax.data.countdown): every listed solution
    of every held-out problem is accepted, and the prompt-style continuation too."""
    dc = pytest.importorskip("reason_jax.data.countdown")
    problems = dc.eval_problems(514, spec=dc.CLASSIC_SPEC) + dc.eval_problems(100)
    assert problems
    n = 0
    for rec in problems:
        for sol in dc.all_solutions(rec["numbers"], rec["target"]):
            assert countdown_verify(sol, rec).status == "ok", (rec, sol)
            n += 1
        assert countdown_verify("1+1+1+1", rec).status == "wrong"
    assert n > 1000


def test_bench_verifier(capsys, monkeypatch):
    """`reason-jax bench verifier` end to end on a small batch (the numbers in
    docs/verifiers.md come from the full 4096-answer run)."""
    from reason_jax import cli
    monkeypatch.setenv("REASON_JAX_BENCH_VERIFIER_N", "64")
    assert cli.main(["bench", "verifier", "--iters", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("mathverify_alone_ms", "pool_1worker_ms", "worker_start_s", "batch_s"):
        assert out[key] > 0, key
    assert out["answers"] == 64 and 0.3 < out["accuracy"] < 0.7
    assert out["status_counts"]["ok"] + out["status_counts"]["wrong"] == 64
    assert out["engine_imported_here"] == []
