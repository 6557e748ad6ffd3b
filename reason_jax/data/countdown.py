"""The built-in countdown task: reach a target with a few numbers and ``+ - *``.

A problem is ``spec.numbers`` numbers in 1..``spec.max_number`` and a target in
0..``spec.max_target``; the prompt is ``"a,b,c,d:ttt="`` (target zero-padded to three digits),
e.g. ``"3,7,9,2:092="``, and a correct completion is an expression that uses each number
exactly once, e.g. ``"(3+7)*9+2"``, followed by EOS. Records are
``{"prompt": str, "numbers": [int, ...], "target": int}``; ``numbers`` and ``target`` are the
countdown verifier's fields. :class:`CountdownSpec` is the task's size (config keys
``data.countdown.*``); the built-in recipe uses four numbers 1-9 (:data:`DEFAULT_SPEC`).

Why four numbers. With three digits the whole task has only 2,072 distinct problems: a tiny
model memorises the training quarter it sees, and RL then sharpens memorised answers without
carrying anything to held-out problems (docs/ablations.md has the measurements). Four digits
give about 60,000 distinct problems, far more than a 10-minute run can memorise, so RL keeps
meeting new problems and what it learns is arithmetic, which transfers.

Determinism. Problem ``index`` of stream ``(seed, split)`` is drawn from its own generator,
``np.random.default_rng([seed, split_id, index])``, so any record can be recomputed without
replaying the stream and a resumed run sees exactly the prompts it would have seen.

Distribution. Draw the numbers uniformly, then a random expression over them (a random
ordering, a random binary tree shape, random operators), evaluate it and keep the problem if
the value is in 0..max_target (otherwise draw again). Every target is therefore reachable,
and targets follow the distribution of random expressions (small values are common).

Train/eval split. A problem's identity is its *sorted* numbers and its target (the prompt's
number order does not change the problem). A fixed hash of that identity
(:func:`is_eval_problem`; independent of any seed) holds out ``EVAL_PERMILLE`` per mille of
all problems. The train stream rejects held-out problems, so no train seed can ever produce an
eval problem. :func:`eval_problems` draws *distinct* held-out problems from the held-out
stream (same distribution as training), so pass@k never weights a problem twice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import itertools
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "CountdownSpec",
    "DEFAULT_SPEC",
    "CLASSIC_SPEC",
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

# A quarter of all problems is held out: enough that a 512-problem eval exists even for the
# three-digit task (514 held out of 2,072).
EVAL_PERMILLE = 250
# Nominal length of the (endless) train stream: grain datasets need a length; nobody reaches it.
TRAIN_SIZE = 2**62

_SPLIT_IDS = {"train": 0, "eval": 1}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_OPS = ("+", "-", "*")
_MAX_DRAWS = 10_000  # a draw is kept with probability ~0.75 (train) / ~0.25 (eval)


@dataclasses.dataclass(frozen=True)
class CountdownSpec:
    """The size of the task: how many numbers, their range, and the largest target.

    The target is written with three digits, so ``max_target`` is at most 999; numbers may
    have several digits (``max_number`` up to 99).
    """

    numbers: int = 4
    max_number: int = 9
    max_target: int = 999

    def __post_init__(self):
        if not 2 <= self.numbers <= 6:
            raise ValueError(f"data.countdown.numbers must be in 2..6, got {self.numbers}")
        if not 1 <= self.max_number <= 99:
            raise ValueError(f"data.countdown.max_number must be in 1..99, got {self.max_number}")
        if not 1 <= self.max_target <= 999:
            raise ValueError(f"data.countdown.max_target must be in 1..999 (three digits), "
                             f"got {self.max_target}")


DEFAULT_SPEC = CountdownSpec()
# The original three-digit task (2,072 distinct problems), kept for comparisons.
CLASSIC_SPEC = CountdownSpec(numbers=3)


def format_prompt(numbers: Sequence[int], target: int, spec: CountdownSpec | None = None) -> str:
    """The prompt text, e.g. ``format_prompt([3, 7, 9, 2], 92) == "3,7,9,2:092="``.

    ``spec`` (default: as many numbers as given, each 1..99, target 0..999) validates ranges.
    """
    spec = spec or CountdownSpec(numbers=len(numbers), max_number=99)
    if len(numbers) != spec.numbers or not all(1 <= int(n) <= spec.max_number for n in numbers):
        raise ValueError(f"expected {spec.numbers} numbers in 1..{spec.max_number}, got {numbers!r}")
    if not 0 <= int(target) <= spec.max_target:
        raise ValueError(f"target must be in 0..{spec.max_target}, got {target!r}")
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


_Node = tuple[int, str, "str | None"]  # (value, text, top operator or None for a leaf)


def _combine(left: _Node, op: str, right: _Node) -> _Node:
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


def _leaf(n: int) -> _Node:
    return (int(n), str(int(n)), None)


@functools.lru_cache(maxsize=4096)
def _trees(ordered: tuple[int, ...]) -> tuple[_Node, ...]:
    """Every expression over ``ordered`` in this left-to-right order: all binary tree shapes
    (split the sequence in two, recursively) and all operators."""
    if len(ordered) == 1:
        return (_leaf(ordered[0]),)
    out = []
    for i in range(1, len(ordered)):
        for left in _trees(ordered[:i]):
            for right in _trees(ordered[i:]):
                out.extend(_combine(left, op, right) for op in _OPS)
    return tuple(out)


def _expressions(numbers: Sequence[int]) -> Iterator[tuple[int, str]]:
    """Every (value, text) over all orderings, all tree shapes and all operators."""
    for ordered in set(itertools.permutations(int(n) for n in numbers)):
        for value, text, _ in _trees(ordered):
            yield value, text


@functools.lru_cache(maxsize=1024)
def _solution_table(sorted_numbers: tuple[int, ...], max_target: int) -> dict[int, tuple[str, ...]]:
    """Target -> sorted distinct expressions, for one multiset of numbers."""
    table: dict[int, set[str]] = {}
    for value, text in _expressions(sorted_numbers):
        if 0 <= value <= max_target:
            table.setdefault(value, set()).add(text)
    return {target: tuple(sorted(texts)) for target, texts in sorted(table.items())}


def all_solutions(numbers: Sequence[int], target: int, max_target: int = 999) -> list[str]:
    """Every distinct expression over ``numbers`` (each used once) that evaluates to ``target``.

    Expressions are in minimal-parentheses form with no spaces, over all orderings and tree
    shapes, sorted; e.g. ``all_solutions([3, 7, 9], 90) == ["(3+7)*9", "(7+3)*9", "9*(3+7)",
    "9*(7+3)"]``. Empty when the target is unreachable. Results are cached per multiset.
    """
    key = tuple(sorted(int(n) for n in numbers))
    return list(_solution_table(key, int(max_target)).get(int(target), ()))


def reachable_targets(numbers: Sequence[int], max_target: int = 999) -> list[int]:
    """Sorted targets in 0..max_target that some expression over ``numbers`` reaches."""
    return list(_solution_table(tuple(sorted(int(n) for n in numbers)), int(max_target)))


def is_eval_problem(numbers: Sequence[int], target: int) -> bool:
    """Whether a problem belongs to the held-out split (a fixed hash of sorted numbers+target).

    blake2b rather than Python's ``hash``: it is stable across processes and versions.
    """
    key = ",".join(str(int(n)) for n in sorted(numbers)) + f":{int(target)}"
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"cd-eval").digest()
    return int.from_bytes(digest, "little") % 1000 < EVAL_PERMILLE


def _record(numbers: Sequence[int], target: int, spec: CountdownSpec) -> dict:
    numbers = [int(n) for n in numbers]
    return {"prompt": format_prompt(numbers, target, spec), "numbers": numbers,
            "target": int(target)}


def _random_tree(rng: np.random.Generator, leaves: list[_Node]) -> _Node:
    """A random expression over ``leaves`` in this order: a random split point, recursively,
    and a random operator at every inner node."""
    if len(leaves) == 1:
        return leaves[0]
    i = int(rng.integers(1, len(leaves)))
    left, right = _random_tree(rng, leaves[:i]), _random_tree(rng, leaves[i:])
    return _combine(left, _OPS[int(rng.integers(0, len(_OPS)))], right)


def generate_problem(seed: int, index: int, split: str = "train",
                     spec: CountdownSpec = DEFAULT_SPEC) -> dict:
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
        numbers = rng.integers(1, spec.max_number + 1, size=spec.numbers)
        value = _random_tree(rng, [_leaf(n) for n in rng.permutation(numbers)])[0]
        if 0 <= value <= spec.max_target and is_eval_problem(numbers, value) == want_eval:
            return _record(numbers.tolist(), value, spec)
    raise RuntimeError(f"no {split} problem after {_MAX_DRAWS} draws (seed={seed}, index={index})")


def eval_problems(n: int, seed: int = 0, spec: CountdownSpec = DEFAULT_SPEC) -> list[dict]:
    """``n`` distinct held-out problems: the first ``n`` distinct ones of the held-out stream
    ``(seed, "eval")``, so they follow the training distribution and none is counted twice.
    """
    out, seen = [], set()
    # Small spaces run dry: the three-digit task holds out 514 problems, and drawing all of
    # them takes a few thousand draws; past that bound the space has fewer than n.
    for index in range(max(100 * n, 20_000)):
        rec = generate_problem(seed, index, "eval", spec)
        key = (tuple(sorted(rec["numbers"])), rec["target"])
        if key not in seen:
            seen.add(key)
            out.append(rec)
            if len(out) == n:
                return out
    raise ValueError(f"asked for {n} eval problems but only {len(out)} distinct ones are held "
                     f"out of {spec}")


class CountdownSource:
    """Random-access countdown records, usable as a grain data source.

    ``split="train"``: an endless stream (nominal length :data:`TRAIN_SIZE`), record ``i`` is
    ``generate_problem(seed, i, "train", spec)``, computed on access. Feed it to the pipeline
    with ``shuffle=False``: records are already independent draws.
    ``split="eval"``: ``size`` distinct held-out problems from :func:`eval_problems` (default
    512), computed once.
    """

    def __init__(self, seed: int = 0, split: str = "train", size: int | None = None,
                 spec: CountdownSpec = DEFAULT_SPEC):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        self.seed = int(seed)
        self.split = split
        self.spec = spec
        if split == "eval":
            self._records: list[dict] | None = eval_problems(size or 512, seed, spec)
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
        return generate_problem(self.seed, index, self.split, self.spec)

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
