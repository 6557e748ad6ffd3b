"""The built-in countdown task: reach a target with three digits and ``+ - *``.

A problem is three numbers 1-9 and a target 0-999; the prompt is ``"a,b,c:ttt="`` (target
zero-padded to three digits), e.g. ``"3,7,9:090="``, and a correct completion is an expression
that uses each number exactly once, e.g. ``"(3+7)*9"``, followed by EOS. Records are
``{"prompt": str, "numbers": [int, int, int], "target": int}``; ``numbers`` and ``target`` are
the countdown verifier's fields.

Determinism. Problem ``index`` of stream ``(seed, split)`` is drawn from its own generator,
``np.random.default_rng([seed, split_id, index])``, so any record can be recomputed without
replaying the stream and a resumed run sees exactly the prompts it would have seen.

Distribution. Draw three digits uniformly, then a random expression over them (a random
ordering, one of the two tree shapes, two random operators), evaluate it and keep the problem
if the value is in 0..999 (otherwise draw again). Every target is therefore reachable, and
targets follow the distribution of random expressions (small values are common).

Train/eval split. A problem's identity is its *sorted* numbers and its target (the prompt's
number order does not change the problem). A fixed hash of that identity
(:func:`is_eval_problem`; independent of any seed) holds out ``EVAL_PERMILLE`` per mille of
all problems. The train stream rejects held-out problems, so no train seed can ever produce an
eval problem; :func:`eval_problems` enumerates the held-out set (the whole task has only 2,072
distinct problems, 514 of them held out). ``generate_problem(..., split="eval")`` is the
matching random stream over the held-out set, for when sampling with replacement is wanted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "NUM_NUMBERS",
    "MAX_NUMBER",
    "MAX_TARGET",
    "EVAL_PERMILLE",
    "TRAIN_SIZE",
    "format_prompt",
    "parse_prompt",
    "all_solutions",
    "reachable_targets",
    "is_eval_problem",
    "generate_problem",
    "eval_problems",
    "CountdownSource",
    "countdown_tokenizer",
]

NUM_NUMBERS = 3
MAX_NUMBER = 9
MAX_TARGET = 999
# The whole task has only 2,072 distinct problems (sorted numbers, target); a quarter is held
# out so that a 512-problem eval exists (514 problems with this hash).
EVAL_PERMILLE = 250
# Nominal length of the (endless) train stream: grain datasets need a length; nobody reaches it.
TRAIN_SIZE = 2**62

_SPLIT_IDS = {"train": 0, "eval": 1}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_OPS = ("+", "-", "*")
_MAX_DRAWS = 10_000  # a draw is kept with probability ~0.75 (train) / ~0.25 (eval)


def format_prompt(numbers: Sequence[int], target: int) -> str:
    """The prompt text, e.g. ``format_prompt([3, 7, 9], 90) == "3,7,9:090="``."""
    if len(numbers) != NUM_NUMBERS or not all(1 <= int(n) <= MAX_NUMBER for n in numbers):
        raise ValueError(f"expected {NUM_NUMBERS} numbers in 1..{MAX_NUMBER}, got {numbers!r}")
    if not 0 <= int(target) <= MAX_TARGET:
        raise ValueError(f"target must be in 0..{MAX_TARGET}, got {target!r}")
    return ",".join(str(int(n)) for n in numbers) + f":{int(target):03d}="


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """Inverse of :func:`format_prompt`: ``"3,7,9:090="`` -> ``([3, 7, 9], 90)``."""
    try:
        head, rest = prompt.split(":")
        if not rest.endswith("="):
            raise ValueError
        numbers = [int(x) for x in head.split(",")]
        target = int(rest[:-1])
    except ValueError:
        raise ValueError(f"not a countdown prompt: {prompt!r}") from None
    return numbers, target


def _combine(left: tuple[int, str, str | None], op: str, right: tuple[int, str, str | None]):
    """Join two (value, text, top operator) nodes with the fewest parentheses.

    A child needs parentheses when its operator binds looser than ``op``; the right child of
    ``-`` also needs them at equal precedence (``a-(b-c)`` is not ``a-b-c``). ``*`` and ``+``
    are associative, so ``a*(b*c)`` is written ``a*b*c``, and ``a+(b-c)`` is ``a+b-c``.
    """
    lv, ls, lop = left
    rv, rs, rop = right
    if lop is not None and _PRECEDENCE[lop] < _PRECEDENCE[op]:
        ls = f"({ls})"
    if rop is not None and (
        _PRECEDENCE[rop] < _PRECEDENCE[op] or (_PRECEDENCE[rop] == _PRECEDENCE[op] and op == "-")
    ):
        rs = f"({rs})"
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    return value, f"{ls}{op}{rs}", op


def _expressions(numbers: Sequence[int]) -> Iterator[tuple[int, str]]:
    """Every (value, text) over all orderings, both tree shapes and all operator pairs."""
    for a, b, c in set(itertools.permutations(int(n) for n in numbers)):
        leaves = [(a, str(a), None), (b, str(b), None), (c, str(c), None)]
        for op1, op2 in itertools.product(_OPS, repeat=2):
            # ((a op1 b) op2 c) and (a op1 (b op2 c)) are the only shapes with three leaves.
            yield _combine(_combine(leaves[0], op1, leaves[1]), op2, leaves[2])[:2]
            yield _combine(leaves[0], op1, _combine(leaves[1], op2, leaves[2]))[:2]


@functools.lru_cache(maxsize=None)
def _solution_table(sorted_numbers: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    """Target -> sorted distinct expressions, for one multiset of numbers (165 of them)."""
    table: dict[int, set[str]] = {}
    for value, text in _expressions(sorted_numbers):
        if 0 <= value <= MAX_TARGET:
            table.setdefault(value, set()).add(text)
    return {target: tuple(sorted(texts)) for target, texts in sorted(table.items())}


def all_solutions(numbers: Sequence[int], target: int) -> list[str]:
    """Every distinct expression over ``numbers`` (each used once) that evaluates to ``target``.

    Expressions are in minimal-parentheses form with no spaces, over all orderings and tree
    shapes, sorted; e.g. ``all_solutions([3, 7, 9], 90) == ["(3+7)*9", "(7+3)*9", "9*(3+7)",
    "9*(7+3)"]``. Empty when the target is unreachable. Results are cached per multiset.
    """
    key = tuple(sorted(int(n) for n in numbers))
    return list(_solution_table(key).get(int(target), ()))


def reachable_targets(numbers: Sequence[int]) -> list[int]:
    """Sorted targets in 0..999 that some expression over ``numbers`` reaches."""
    return list(_solution_table(tuple(sorted(int(n) for n in numbers))))


def is_eval_problem(numbers: Sequence[int], target: int) -> bool:
    """Whether a problem belongs to the held-out split (a fixed hash of sorted numbers+target).

    blake2b rather than Python's ``hash``: it is stable across processes and versions.
    """
    key = ",".join(str(int(n)) for n in sorted(numbers)) + f":{int(target)}"
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"cd-eval").digest()
    return int.from_bytes(digest, "little") % 1000 < EVAL_PERMILLE


def _record(numbers: Sequence[int], target: int) -> dict:
    numbers = [int(n) for n in numbers]
    return {"prompt": format_prompt(numbers, target), "numbers": numbers, "target": int(target)}


def generate_problem(seed: int, index: int, split: str = "train") -> dict:
    """Problem ``index`` of the ``(seed, split)`` stream, as a record dict.

    Pure function of its arguments (no global random state).
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
    want_eval = split == "eval"
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    for _ in range(_MAX_DRAWS):
        numbers = rng.integers(1, MAX_NUMBER + 1, size=NUM_NUMBERS)
        a, b, c = (int(n) for n in rng.permutation(numbers))
        op1, op2 = (_OPS[int(i)] for i in rng.integers(0, len(_OPS), size=2))
        leaves = [(a, str(a), None), (b, str(b), None), (c, str(c), None)]
        if rng.integers(0, 2) == 0:
            value = _combine(_combine(leaves[0], op1, leaves[1]), op2, leaves[2])[0]
        else:
            value = _combine(leaves[0], op1, _combine(leaves[1], op2, leaves[2]))[0]
        if 0 <= value <= MAX_TARGET and is_eval_problem(numbers, value) == want_eval:
            return _record(numbers.tolist(), value)
    raise RuntimeError(f"no {split} problem after {_MAX_DRAWS} draws (seed={seed}, index={index})")


@functools.lru_cache(maxsize=None)
def _all_eval_keys() -> tuple[tuple[tuple[int, ...], int], ...]:
    """Every held-out (sorted numbers, target), in sorted order."""
    return tuple(
        (numbers, target)
        for numbers in itertools.combinations_with_replacement(range(1, MAX_NUMBER + 1), NUM_NUMBERS)
        for target in reachable_targets(numbers)
        if is_eval_problem(numbers, target)
    )


def eval_problems(n: int | None = None, seed: int = 0) -> list[dict]:
    """``n`` distinct held-out problems (all of them when ``n`` is None), in a seeded order.

    The held-out set is enumerated rather than sampled: the problem space is small (2,072
    distinct problems, 514 held out), so sampling would repeat problems and pass@k would weight
    some twice. ``seed`` fixes the order and the order of each prompt's numbers.
    """
    keys = _all_eval_keys()
    if n is None:
        n = len(keys)
    if not 0 <= n <= len(keys):
        raise ValueError(f"asked for {n} eval problems but only {len(keys)} are held out")
    rng = np.random.default_rng([int(seed), _SPLIT_IDS["eval"]])
    order = rng.permutation(len(keys))[:n]
    return [_record(rng.permutation(keys[i][0]).tolist(), keys[i][1]) for i in order]


class CountdownSource:
    """Random-access countdown records, usable as a grain data source.

    ``split="train"``: an endless stream (nominal length :data:`TRAIN_SIZE`), record ``i`` is
    ``generate_problem(seed, i, "train")``, computed on access. Feed it to the pipeline with
    ``shuffle=False``: records are already independent draws.
    ``split="eval"``: ``size`` distinct held-out problems from :func:`eval_problems` (all 514
    when ``size`` is None), computed once.
    """

    def __init__(self, seed: int = 0, split: str = "train", size: int | None = None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        self.seed = int(seed)
        self.split = split
        if split == "eval":
            self._records: list[dict] | None = eval_problems(size, seed)
            self._size = len(self._records)
        else:
            self._records = None
            self._size = TRAIN_SIZE if size is None else int(size)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self._size:
            raise IndexError(f"index {index} out of range for {self!r}")
        if self._records is not None:
            return dict(self._records[index], numbers=list(self._records[index]["numbers"]))
        return generate_problem(self.seed, index, self.split)

    def __repr__(self) -> str:
        return f"CountdownSource(seed={self.seed}, split={self.split!r}, size={self._size})"


@functools.lru_cache(maxsize=1)
def countdown_tokenizer():
    """The shipped character-level SentencePiece tokenizer (``assets/countdown.model``).

    ids: ``<pad>``=0, ``<s>``=1, ``</s>``=2 (EOS), ``<unk>``=3, then one id per character.
    """
    from reason_jax.models.tokenizer import SentencePieceTokenizer

    path = importlib.resources.files("reason_jax.data") / "assets" / "countdown.model"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; rebuild it with `python -m reason_jax.data.build_countdown_tokenizer`"
        )
    with importlib.resources.as_file(path) as file:
        return SentencePieceTokenizer(file)
