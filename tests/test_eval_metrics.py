"""pass@k, maj@k and the eval.json summary."""

import json
import math

import numpy as np
import pytest

from reason_jax.eval import maj_at_k, majority_vote, mean_pass_at_k, pass_at_k, summarise


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 8) == 1.0  # k > n - c: every draw of 8 includes a correct one
    assert pass_at_k(10, 3, 7) == pytest.approx(1 - 1 / math.comb(10, 7))
    for n, c, k in [(10, 3, 2), (20, 5, 4), (16, 1, 16), (7, 2, 3)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_stable_for_large_n():
    # The binomials are astronomically large here; the product form must still be exact-ish.
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)
    assert 0.0 < pass_at_k(5000, 3, 100) < 1.0


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_pass_at_k():
    matrix = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    assert mean_pass_at_k(matrix, 1) == pytest.approx((0.25 + 1 + 0) / 3)
    assert mean_pass_at_k(matrix, 4) == pytest.approx(2 / 3)
    assert mean_pass_at_k([[True], [False, True]], 1) == pytest.approx(0.75)  # ragged rows
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_majority_vote_ties_and_none():
    assert majority_vote(["a", "b", "b", "a"]) == "a"  # tie -> first occurrence
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote([None, None, None, "x"]) == "x"  # None never wins
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_at_k():
    answers = [["1", "2", "2", "3"], ["5", None, None, "6"], [None, None, None, None],
               ["7", "8", "8", "8"]]
    gold = ["2", "6", "0", "7"]
    # Problem 0: "2" wins; 1: tie 5/6 -> "5" (wrong); 2: no answer; 3: "8" (wrong).
    assert maj_at_k(answers, gold) == pytest.approx(1 / 4)
    # k=1 votes over the first sample only: "1", "5", None, "7".
    assert maj_at_k(answers, gold, k=1) == pytest.approx(1 / 4)
    assert maj_at_k(answers, [lambda a: a in {"1", "2"}, "6", "0", "7"], k=2) == 0.5
    assert maj_at_k(answers, lambda i, a: a == gold[i], k=4) == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        maj_at_k(answers, gold, k=5)
    with pytest.raises(ValueError):
        maj_at_k(answers, gold[:2])


def test_summarise_with_tasks():
    results = [
        {"task": "gsm8k", "correct": [True, False, True, True], "answers": ["4", "5", "4", "4"],
         "greedy_correct": True},
        {"task": "gsm8k", "correct": [False, False, False, True],
         "answers": ["1", "1", None, "2"], "greedy_correct": False},
        {"task": "math", "correct": [False] * 4, "answers": [None] * 4, "greedy_correct": False},
    ]
    s = summarise(results)
    assert s["num_problems"] == 3 and s["k"] == 4
    assert s["pass@1"] == pytest.approx((0.75 + 0.25 + 0) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert s["maj@4"] == pytest.approx(1 / 3)  # "4" right, "1" wrong, nothing answered
    assert s["greedy_accuracy"] == pytest.approx(1 / 3)
    assert set(s["per_task"]) == {"gsm8k", "math"}
    assert s["per_task"]["gsm8k"]["num_problems"] == 2
    assert s["per_task"]["gsm8k"]["pass@1"] == pytest.approx(0.5)
    assert s["per_task"]["gsm8k"]["maj@4"] == pytest.approx(0.5)
    assert s["per_task"]["math"]["pass@4"] == 0.0
    json.dumps(s, allow_nan=False)  # eval.json is strict JSON


def test_summarise_variants():
    s = summarise([{"correct": [1, 0]}, {"correct": [0, 0]}], k=1)
    assert s == {"num_problems": 2, "k": 1, "pass@1": 0.25}
    assert "maj@1" not in s and "per_task" not in s
    assert summarise([{"greedy_correct": True}, {"greedy_correct": False}]) == {
        "num_problems": 2, "greedy_accuracy": 0.5}
    assert summarise([]) == {"num_problems": 0}
    with pytest.raises(ValueError):
        summarise([{"correct": [True]}, {"greedy_correct": True}])
