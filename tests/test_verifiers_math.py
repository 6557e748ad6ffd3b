"""Math and countdown verifiers, including the adversarial (injection) suite."""

import os
import sys
import time

import pytest

from reason_jax import verifiers
from reason_jax.verifiers.countdown import verify as countdown_verify
from reason_jax.verifiers.math_verifier import extract_answer, verify as math_verify
from reason_jax.verifiers.mathexpr import answers_match


def test_no_jax_import():
    assert "reason_jax.verifiers" in sys.modules
    import subprocess
    code = "import sys, reason_jax.verifiers; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("completion,gold,expected", [
    (r"so the answer is \boxed{\frac{1}{2}}.", "0.5", "ok"),
    (r"\boxed{0.5}", r"\frac{1}{2}", "ok"),
    (r"\boxed{1,000}", "1000", "ok"),
    (r"\boxed{\dfrac{3}{4}}", "0.75", "ok"),
    (r"\boxed{\tfrac34}", r"\frac{3}{4}", "ok"),
    (r"\boxed{\boxed{7}}", "7", "ok"),
    (r"\boxed{3} no wait \boxed{5}", "5", "ok"),
    (r"\boxed{5} no wait \boxed{3}", "5", "wrong"),
    (r"\boxed{\frac{1}{3}}", "0.33", "wrong"),
    ("no answer at all", "1", "format_error"),
    ("", "1", "format_error"),
    ("Some work.\nAnswer: 42", "42", "ok"),
    ("Answer: $12$ cm", "12", "ok"),
    ("blah\n#### 1,234", "1234", "ok"),
    ("<answer>18</answer>", "18", "ok"),
    ("<answer>17</answer>", "18", "wrong"),
    (r"\boxed{50\%}", "50", "ok"),
    (r"\boxed{90^\circ}", "90", "ok"),
    (r"\boxed{90^{\circ}}", "90", "ok"),
    (r"\boxed{2.0}", "2", "ok"),
    (r"\boxed{x = 3}", "3", "ok"),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", "ok"),
    (r"\boxed{(2, 1)}", "(1,2)", "wrong"),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", "ok"),
    (r"\boxed{x^2+1}", "(x+1)^2", "wrong"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}/2", "ok"),
    (r"\boxed{2\pi}", r"2\pi", "ok"),
    (r"\boxed{10\text{ cm}}", "10", "ok"),
    (r"\boxed{-\frac{7}{2}}", "-3.5", "ok"),
    (r"\boxed{2^{10}}", "1024", "ok"),
])
def test_math_pairs(completion, gold, expected):
    v = math_verify(completion, {"answer": gold})
    assert v.status == expected, (completion, gold, v)


def test_math_extraction_formats():
    assert extract_answer(r"a \boxed{1} b \boxed{\frac{2}{3}}") == (r"\frac{2}{3}", "boxed")
    assert extract_answer("x\nAnswer: 3\n")[0] == "3"
    assert extract_answer("#### 7")[0] == "7"
    assert extract_answer("nothing") == (None, "none")


INJECTIONS = [
    r"\boxed{__import__('os').system('touch PWNED')}",
    "Answer: __import__('os').system('touch PWNED')",
    "Answer: (lambda: 0)()",
    r"\boxed{9**9**9**9}",
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{10^10^10}",
    "Answer: 10^10^10",
    r"\boxed{" + "9" * 1_000_000 + "}",
    "Answer: " + "1+" * 500_000 + "1",
    r"\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}",
    r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    r"\boxed{" + r"\frac{" * 3000 + "1" + "}{2}" * 3000 + "}",
    "Answer: 1\x00; import os",
    "Answer: \u202e\u0000\ud800\U0001d538 \u2212\u221e",
    r"\boxed{\sqrt{-1}}",
    r"\boxed{0^{-1}}",
    r"\boxed{1/0}",
    r"\boxed{2^{0.5}^{1000000}}",
    r"\boxed{\frac{1}{0}}",
    "Answer: " + "x" * 300,
    "Answer: 1 " + "a" * 900 + "!",            # regex backtracking bait
    "Answer: 1 " + "ab " * 300 + "!",
    "Answer: " + "1," * 450 + "!",
    r"\boxed{" + r"\text{" * 400 + "}" * 400 + "}",
    "Answer: " + "x" * 400,                    # 400 implicit multiplications
    "Answer: " + "-" * 900 + "1",
    "Answer: " + "2^" * 300 + "2",
]


@pytest.mark.parametrize("i", range(len(INJECTIONS)))
def test_math_injection(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = time.perf_counter()
    v = math_verify(INJECTIONS[i], {"answer": "0"})
    assert time.perf_counter() - t < 0.2
    assert v.status in ("wrong", "format_error")
    assert v.fraction == 0.0
    assert not os.listdir(tmp_path)
    info = verifiers.compose(v, {})
    assert info["reward"] == 0.0
    assert info["extracted"] is None or len(info["extracted"]) < 300


def test_math_gold_answer_not_trusted_either():
    # A malicious dataset row is parsed by the same restricted parser.
    assert not answers_match("1", "__import__('os')")
    assert math_verify(r"\boxed{1}", {"answer": r"\boxed{1}"}).status == "ok"


def test_reward_composition():
    v = math_verify(r"\boxed{2}", {"answer": "2"})
    info = verifiers.compose(v, {"correct_reward": 1.0, "wrong_reward": -1.0, "format_reward": 0.5})
    assert info["reward"] == 1.5 and info["components"] == {"correctness": 1.0, "format": 0.5}
    v = math_verify(r"\boxed{3}", {"answer": "2"})
    info = verifiers.compose(v, {"correct_reward": 1.0, "wrong_reward": -1.0, "format_reward": 0.5})
    assert info["reward"] == -0.5 and info["status"] == "wrong"
    v = math_verify("no", {"answer": "2"})
    info = verifiers.compose(v, {"wrong_reward": -1.0, "format_reward": 0.5})
    assert info["reward"] == -1.0 and info["components"]["format"] == 0.0
    info = verifiers.compose(v, {"wrong_reward": -1.0, "format_error_reward": -2.0})
    assert info["reward"] == -2.0


def test_get_and_inline_call():
    ver = verifiers.get("math")
    assert ver(r"\boxed{4}", {"answer": "4"})["status"] == "ok"
    assert set(verifiers.names()) >= {"math", "countdown", "code"}
    with pytest.raises(KeyError):
        verifiers.get("nope")


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
    problems = dc.eval_problems()
    assert problems
    n = 0
    for rec in problems:
        for sol in dc.all_solutions(rec["numbers"], rec["target"]):
            assert countdown_verify(sol, rec).status == "ok", (rec, sol)
            n += 1
        assert countdown_verify("1+1+1+1", rec).status == "wrong"
    assert n > 1000
