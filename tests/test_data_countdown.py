"""The built-in countdown task: determinism, reachability, solutions, held-out split."""

import ast
import itertools
import re

import pytest

from reason_jax.data import countdown as cd


def _check_expression(text, numbers, target):
    """Our own generated strings only: digits used once each, only + - * ( ), right value."""
    assert re.fullmatch(r"[0-9+\-*()]+", text), text
    assert sorted(int(d) for d in re.findall(r"\d", text)) == sorted(numbers), text
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult)
    assert all(isinstance(node, allowed) for node in ast.walk(tree)), text
    assert eval(compile(tree, "<expr>", "eval")) == target, text


def test_prompt_format():
    assert cd.format_prompt([3, 7, 9], 90) == "3,7,9:090="
    assert cd.format_prompt([1, 1, 1], 0) == "1,1,1:000="
    assert cd.parse_prompt("3,7,9:090=") == ([3, 7, 9], 90)
    with pytest.raises(ValueError):
        cd.format_prompt([0, 7, 9], 90)
    with pytest.raises(ValueError):
        cd.format_prompt([3, 7, 9], 1000)


def test_generation_is_deterministic_by_seed_and_index():
    a = [cd.generate_problem(0, i) for i in range(50)]
    assert a == [cd.generate_problem(0, i) for i in range(50)]
    # Out-of-order access gives the same record (no hidden stream state).
    assert cd.generate_problem(0, 37) == a[37]
    b = [cd.generate_problem(1, i) for i in range(50)]
    assert a != b
    assert len({r["prompt"] for r in a}) > 30
    src = cd.CountdownSource(seed=0)
    assert src[37] == a[37] and len(src) == cd.TRAIN_SIZE


def test_records_are_reachable_and_well_formed():
    for i in range(300):
        rec = cd.generate_problem(3, i)
        assert set(rec) == {"prompt", "numbers", "target"}
        assert len(rec["numbers"]) == 3 and all(1 <= n <= 9 for n in rec["numbers"])
        assert 0 <= rec["target"] <= 999
        assert rec["prompt"] == cd.format_prompt(rec["numbers"], rec["target"])
        solutions = cd.all_solutions(rec["numbers"], rec["target"])
        assert solutions
        for text in solutions:
            _check_expression(text, rec["numbers"], rec["target"])


def test_all_solutions_complete_and_minimal():
    assert cd.all_solutions([3, 7, 9], 90) == ["(3+7)*9", "(7+3)*9", "9*(3+7)", "9*(7+3)"]
    assert cd.all_solutions([9, 7, 3], 90) == cd.all_solutions([3, 7, 9], 90)
    assert cd.all_solutions([1, 1, 1], 500) == []
    # Minimal parentheses: Python's unparser (which adds only needed parentheses) agrees.
    for numbers in [(2, 3, 4), (1, 5, 5), (3, 7, 9)]:
        for target in cd.reachable_targets(numbers):
            for text in cd.all_solutions(numbers, target):
                assert ast.unparse(ast.parse(text, mode="eval")).replace(" ", "") == text
    # Brute force over every full parenthesisation agrees with the enumeration.
    for numbers in [(2, 3, 4), (1, 5, 5), (9, 9, 9)]:
        values = set()
        for a, b, c in itertools.permutations(numbers):
            for o1, o2 in itertools.product("+-*", repeat=2):
                for text in (f"(({a}{o1}{b}){o2}{c})", f"({a}{o1}({b}{o2}{c}))"):
                    v = eval(text)
                    if 0 <= v <= 999:
                        values.add(v)
        assert set(cd.reachable_targets(numbers)) == values
        for v in values:
            for text in cd.all_solutions(numbers, v):
                _check_expression(text, numbers, v)
    assert "4-(3-2)" in cd.all_solutions([2, 3, 4], 3)


def test_train_and_eval_never_overlap():
    evals = cd.eval_problems()
    assert len(evals) == len({(tuple(sorted(r["numbers"])), r["target"]) for r in evals}) > 500
    assert all(cd.is_eval_problem(r["numbers"], r["target"]) for r in evals)
    assert cd.eval_problems(512, seed=0) == evals[:512]
    assert cd.eval_problems(20, seed=1) != evals[:20]
    eval_keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in evals}
    for seed in (0, 1):
        for i in range(1000):
            rec = cd.generate_problem(seed, i)
            assert (tuple(sorted(rec["numbers"])), rec["target"]) not in eval_keys
    # The held-out random stream stays inside the held-out set.
    for i in range(50):
        rec = cd.generate_problem(0, i, split="eval")
        assert (tuple(sorted(rec["numbers"])), rec["target"]) in eval_keys
    src = cd.CountdownSource(split="eval", size=512)
    assert len(src) == 512 and src[0] == cd.eval_problems(512)[0]
    with pytest.raises(ValueError, match="held out"):
        cd.eval_problems(10_000)
    # Number order in prompts is not always sorted (the model must not rely on it).
    assert any(r["numbers"] != sorted(r["numbers"]) for r in evals[:50])
