"""Evaluation metrics: unbiased pass@k, majority voting (maj@k) and the eval.json summary.

pass@k follows Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"): from n
samples of which c are correct, the probability that at least one of k samples drawn without
replacement is correct is 1 - C(n-c, k) / C(n, k). Drawing all n samples and using this
estimator has far lower variance than sampling exactly k. The binomials overflow floats for
realistic n, so it is computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["majority_vote", "maj_at_k", "mean_pass_at_k", "pass_at_k", "summarise"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples of which `c` are correct.

    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    n, c, k = int(n), int(c), int(k)
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct_matrix_PK: Iterable[Iterable[Any]], k: int) -> float:
    """Mean over problems of pass@k; row p holds the correctness (truthy) of problem p's samples.

    Rows may differ in length (each uses its own n). Raises ValueError for no problems.
    """
    scores = []
    for row in correct_matrix_PK:
        flags = [bool(x) for x in row]
        scores.append(pass_at_k(len(flags), sum(flags), k))
    if not scores:
        raise ValueError("mean_pass_at_k of zero problems")
    return sum(scores) / len(scores)


def majority_vote(answers: Iterable[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer; ties go to the answer that appeared first.

    None (no answer could be extracted) never wins, so a problem whose samples mostly fail to
    answer is decided by the samples that did. Returns None when no sample answered.
    Answers must be hashable (normalised strings, numbers).
    """
    counts: dict[Hashable, int] = {}  # insertion order = first occurrence, used for ties
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a, n in counts.items() if n == best)


Gold = Sequence[Any] | Callable[[int, Any], bool]


def maj_at_k(answers_per_problem: Sequence[Sequence[Hashable | None]], gold: Gold,
             k: int | None = None) -> float:
    """Fraction of problems whose majority answer over the first `k` samples is correct.

    Args:
      answers_per_problem: extracted answers per problem (None where extraction failed).
      gold: either one entry per problem, a gold answer (compared with ==) or a predicate
        `answer -> bool`; or a single function `fn(problem_index, answer) -> bool`.
      k: samples per problem to vote over (the first k; default all). A problem with fewer
        than k samples raises ValueError.

    A problem where no sample answered counts as incorrect. Raises ValueError for no problems.
    """
    if not answers_per_problem:
        raise ValueError("maj_at_k of zero problems")
    if not callable(gold) and len(gold) != len(answers_per_problem):
        raise ValueError(f"{len(gold)} gold entries for {len(answers_per_problem)} problems")
    correct = 0
    for i, answers in enumerate(answers_per_problem):
        if k is not None:
            if len(answers) < k:
                raise ValueError(f"problem {i} has {len(answers)} samples, fewer than k={k}")
            answers = answers[:k]
        winner = majority_vote(answers)
        if winner is None:
            continue
        if callable(gold):
            ok = gold(i, winner)
        elif callable(gold[i]):
            ok = gold[i](winner)
        else:
            ok = winner == gold[i]
        correct += bool(ok)
    return correct / len(answers_per_problem)


def _summary(records: Sequence[Mapping[str, Any]], k: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"num_problems": len(records)}
    sampled = [r for r in records if r.get("correct") is not None and len(r["correct"]) > 0]
    if sampled and len(sampled) != len(records):
        raise ValueError(f"{len(records) - len(sampled)} of {len(records)} records have no "
                         "sampled 'correct' flags")
    if sampled:
        correct = [[bool(x) for x in r["correct"]] for r in records]
        kk = min(len(c) for c in correct) if k is None else k
        out["k"] = kk
        # pass@1 over all samples is the mean per-sample accuracy: the least noisy estimate.
        out["pass@1"] = mean_pass_at_k(correct, 1)
        out[f"pass@{kk}"] = mean_pass_at_k(correct, kk)
        if all(r.get("answers") is not None for r in records):
            answers = [list(r["answers"]) for r in records]
            for i, (a, c) in enumerate(zip(answers, correct)):
                if len(a) != len(c):
                    raise ValueError(f"record {i}: {len(a)} answers but {len(c)} flags")

            # Samples with the same extracted answer get the same verdict, so the majority
            # answer is judged by the flag of its first occurrence: no gold needed here.
            def is_correct(i: int, answer: Any) -> bool:
                return correct[i][answers[i].index(answer)]

            out[f"maj@{kk}"] = maj_at_k(answers, is_correct, kk)
    greedy = [bool(r["greedy_correct"]) for r in records if r.get("greedy_correct") is not None]
    if greedy:
        out["greedy_accuracy"] = sum(greedy) / len(greedy)
    return out


def summarise(results: Sequence[Mapping[str, Any]], k: int | None = None) -> dict[str, Any]:
    """The eval.json summary of per-problem records.

    Each record is a mapping with (all optional, but consistent across records):
      * "correct": per-sample correctness of the problem's sampled responses;
      * "answers": the extracted answer per sample (None where extraction failed), aligned
        with "correct"; enables maj@k;
      * "greedy_correct": correctness of the greedy (temperature 0) response;
      * "task": the task/dataset name; enables the per-task breakdown.

    Returns {"num_problems", "k", "pass@1", "pass@<k>", "maj@<k>", "greedy_accuracy",
    "per_task": {task: {same keys}}}, each present only when its inputs are. `k` defaults to
    the smallest number of samples any problem has; pass@1 averages over all samples.
    """
    out = _summary(results, k) if results else {"num_problems": 0}
    if any("task" in r for r in results):
        by_task: dict[str, list[Mapping[str, Any]]] = {}
        for r in results:
            by_task.setdefault(str(r.get("task", "unknown")), []).append(r)
        out["per_task"] = {t: _summary(rs, out.get("k")) for t, rs in sorted(by_task.items())}
    return out
