"""The built-in countdown task: determinism, reachability, solutions, held-out split."""

import ast
import itertools
import re

import pytest

from reason_jax.data import countdown as cd


def _check_expression(text, numbers, target):
    """Our own generated strings only: digits used once each, only + - * ( ), right value."""
    assert re.fullmatch(r"[0-9+\-*()]+", text), text
    assert sorted(int(d) for d in re.findall(r"\d+", text)) == sorted(numbers), text
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


@pytest.mark.parametrize("spec", [cd.DEFAULT_SPEC, cd.CLASSIC_SPEC,
                                  cd.CountdownSpec(numbers=3, max_number=20, max_target=500)])
def test_records_are_reachable_and_well_formed(spec):
    for i in range(200):
        rec = cd.generate_problem(3, i, spec=spec)
        assert set(rec) == {"prompt", "numbers", "target"}
        assert len(rec["numbers"]) == spec.numbers
        assert all(1 <= n <= spec.max_number for n in rec["numbers"])
        assert 0 <= rec["target"] <= spec.max_target
        assert rec["prompt"] == cd.format_prompt(rec["numbers"], rec["target"], spec)
        solutions = cd.all_solutions(rec["numbers"], rec["target"], spec.max_target)
        assert solutions
        for text in solutions:
            _check_expression(text, rec["numbers"], rec["target"])


def test_four_numbers_every_tree_shape():
    """Four leaves have five tree shapes; brute force over all of them (fully parenthesised,
    Python's own evaluator on our own strings) agrees with the enumeration."""
    numbers = (2, 3, 5, 7)
    shapes = ["(({a}{o}{b}){p}{c}){q}{d}", "({a}{o}({b}{p}{c})){q}{d}", "({a}{o}{b}){p}({c}{q}{d})",
              "{a}{o}(({b}{p}{c}){q}{d})", "{a}{o}({b}{p}({c}{q}{d}))"]
    values = set()
    for a, b, c, d in itertools.permutations(numbers):
        for o, p, q in itertools.product("+-*", repeat=3):
            for shape in shapes:
                v = eval(shape.format(a=a, b=b, c=c, d=d, o=o, p=p, q=q))
                if 0 <= v <= 999:
                    values.add(v)
    assert set(cd.reachable_targets(numbers)) == values
    for v in list(values)[::7]:
        for text in cd.all_solutions(numbers, v):
            _check_expression(text, numbers, v)
    assert "(2+3)*(7-5)" in cd.all_solutions(numbers, 10)


def test_spec_is_validated():
    with pytest.raises(ValueError, match="numbers"):
        cd.CountdownSpec(numbers=1)
    with pytest.raises(ValueError, match="max_target"):
        cd.CountdownSpec(max_target=1000)
    with pytest.raises(ValueError, match="4 numbers"):
        cd.format_prompt([3, 7, 9], 90, cd.DEFAULT_SPEC)


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


@pytest.mark.parametrize("spec", [cd.DEFAULT_SPEC, cd.CLASSIC_SPEC])
def test_train_and_eval_never_overlap(spec):
    evals = cd.eval_problems(512, spec=spec)
    keys = [(tuple(sorted(r["numbers"])), r["target"]) for r in evals]
    assert len(keys) == len(set(keys)) == 512
    assert all(cd.is_eval_problem(r["numbers"], r["target"]) for r in evals)
    assert cd.eval_problems(100, seed=0, spec=spec) == evals[:100]
    assert cd.eval_problems(20, seed=1, spec=spec) != evals[:20]
    held_out = set(keys)
    for seed in (0, 1):
        for i in range(1000):
            rec = cd.generate_problem(seed, i, spec=spec)
            assert not cd.is_eval_problem(rec["numbers"], rec["target"])
            assert (tuple(sorted(rec["numbers"])), rec["target"]) not in held_out
    src = cd.CountdownSource(split="eval", size=512, spec=spec)
    assert len(src) == 512 and src[0] == evals[0]
    # Number order in prompts is not always sorted (the model must not rely on it).
    assert any(r["numbers"] != sorted(r["numbers"]) for r in evals[:50])


def test_classic_task_holds_out_a_quarter():
    """The three-digit task has 2,072 distinct problems; the hash holds out 514, all of
    which the held-out stream reaches, and no more."""
    total = held = 0
    for numbers in itertools.combinations_with_replacement(range(1, 10), 3):
        for target in cd.reachable_targets(numbers):
            total += 1
            held += cd.is_eval_problem(numbers, target)
    assert (total, held) == (2072, 514)
    assert len(cd.eval_problems(514, spec=cd.CLASSIC_SPEC)) == 514
    with pytest.raises(ValueError, match="held out"):
        cd.eval_problems(515, spec=cd.CLASSIC_SPEC)


def test_default_task_is_too_large_to_memorise():
    """Four digits: ~28,500 distinct problems, and a run's worth of draws keeps meeting new
    ones (the reason the built-in task has four numbers)."""
    total = sum(len(cd.reachable_targets(m))
                for m in itertools.combinations_with_replacement(range(1, 10), 4))
    assert total > 25_000
    seen = {(tuple(sorted(r["numbers"])), r["target"])
            for r in (cd.generate_problem(0, i) for i in range(4000))}
    assert len(seen) > 3000
