"""The ``math`` verifier: Hugging Face math-verify judges equivalence, in isolated workers.

math-verify (what TRL, verl, AReaL and MaxText score math with) parses through sympy, whose
``parse_expr`` evaluates text, so this verifier runs only in workers that isolated
themselves (:mod:`.isolation`: own uid, no network, private tmp, rlimits; registered
``isolated`` in :mod:`.registry`). :func:`verify` refuses to run anywhere else, and this
module imports math-verify only inside :func:`prepare`, which such a worker calls before it
isolates itself. Nothing from sympy or math-verify is ever imported by the trainer.

Extraction, as math-verify does it:

* gold (``record["answer"]``): an answer span (:func:`as_answer`): with its own delimiters
  (``$``, ``\\[``, ``\\(``, ``\\boxed``), as a plain number or as prose it is searched as
  math-verify searches text; otherwise it is read as ``\\boxed{gold}``: a bare
  ``3\\sqrt{3}`` or ``[0, 1)`` is one LaTeX answer, not text to search (verl does the same).
  LaTeX is tried first, then a plain expression.
* prediction (default, ``answer_format=None``): the last ``\\boxed{}`` first (several boxes
  in one LaTeX block are read as a set of solutions), then the last LaTeX block (``$..$``,
  ``$$..$$``, ``\\[..\\]``, ``\\(..\\)``) or plain expression. A completion with an
  ``<answer>...</answer>`` block (R1-style templates) is judged on the last such block, read as
  an answer span: math-verify knows no tags.
* ``answer_format`` in :data:`.answer_formats.FORMATS` (or a tuple: the first found wins)
  demands a format: a completion without it is a ``format_error``; its span is judged like a
  gold answer. Either way ``format_ok`` (the format reward) says whether one of those formats
  was used.

Deadline: an interval timer in the worker stops a sample at ``timeout_s`` (``TimeoutError``:
status ``timeout``, the worker lives on); a hang inside C code (a huge integer power) is
killed by the pool at ``timeout_s + kill_grace_s`` and the worker replaced.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
from typing import Any, Mapping

from . import answer_formats, isolation
from .base import CRASH, FORMAT_ERROR, OK, WRONG, Verdict

MAX_COMPLETION_CHARS = 200_000  # math-verify's regexes are linear, sympy is not: bound both
EXTRACTION = ("latex", "expr")
_DELIMITED = re.compile(r"\\boxed|\\fbox|\\\[|\\\(|(?<!\\)\$")
# Plain numbers go to math-verify's number reader, which knows "1,000.5" and "1000,99".
_PLAIN_NUMBER = re.compile(r"[+-]?\d[\d,]*(\.\d+)?")
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}")  # "the answer is 5"
_WARM_UP = [  # (gold, prediction): walks the parser and grader paths before isolation
    ("7", r"so \boxed{7}"), (r"\frac{1}{2}", "0.5"), ("1000.99", "1,000.99$"),
    (r"$10\%$", "0.1"), (r"$[0,1)$", r"$[0,1)$"), (r"\{1,2\}", r"$\{2, 1\}$"),
    ("(1,2)", r"$\left(1, 2\right)$"), (r"x \geq 5", r"$5 \leq x$"), ("x = 5+5+1 = 11", "11"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"$\begin{pmatrix}1\\2\end{pmatrix}$"),
    (r"\frac{1}{3}\text{ meters}", r"$\dfrac13$ m"), (r"90^\circ", r"\boxed{90}"),
    (r"3+4i", r"\boxed{3+4i}"), (r"\sqrt{2}\pi", "x**2 + sin(x)"), (r"\infty", r"$\log(2)$"),
    (r"\binom{5}{2}", "5!"), (r"x \in (0, \infty)", r"$x > 0$"), (r"\text{(A)}", "A"),
    (r"a \neq b", "a != b"), (r"\cfrac{1}{2}", r"\( 1/2 \)"), ("2", r"\[ \frac{4}{ \]"),
]


class _Expired(BaseException):
    """Raised by the interval timer: a BaseException, so the ``except Exception`` handlers in
    math-verify and sympy do not swallow it."""


def _on_alarm(signum, frame):
    raise _Expired()


@functools.lru_cache(maxsize=8)
def _configs(extraction: tuple) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig
    kinds = {"latex": lambda: LatexExtractionConfig(boxed_match_priority=0),
             "expr": ExprExtractionConfig}
    unknown = [k for k in extraction if k not in kinds]
    if unknown or not extraction:
        raise ValueError(f"extraction must be a non-empty subset of {EXTRACTION}, got "
                         f"{extraction!r}")
    return tuple(kinds[k]() for k in extraction)


def as_answer(text: str) -> str:
    """An answer span (a gold answer, an ``<answer>`` block, a demanded format's span) in the
    form math-verify reads as one answer: bare math is boxed; delimited math, plain numbers
    and prose are left for math-verify to search."""
    if (_DELIMITED.search(text) or _PLAIN_NUMBER.fullmatch(text.strip())
            or _PROSE.search(text)):
        return text
    return "\\boxed{" + text + "}"


@functools.lru_cache(maxsize=4096)  # a group's G samples share their gold
def _parse_gold(gold: str, configs: tuple) -> list:
    from math_verify import parse
    return parse(as_answer(gold), configs, parsing_timeout=None)


def _shown(parsed: list) -> str:
    """A short text of what math-verify extracted: its matched string when it kept one."""
    for p in parsed:
        if isinstance(p, str):
            return p[:200]
    try:
        return str(parsed[0])[:200]
    except Exception:  # noqa: BLE001 - some sympy objects cannot be printed
        return "?"


def _judge(gold_text: str, pred_text: str, configs: tuple, timeout_s: float,
           grader: Mapping[str, Any]) -> tuple[str, str | None, str]:
    """(status, extracted, detail) under a ``timeout_s`` interval timer. ``_Expired`` may
    escape even from the ``finally`` (a timer firing at the very end): callers catch it."""
    from math_verify import parse, verify as mv_verify
    signal.setitimer(signal.ITIMER_REAL, max(float(timeout_s), 1e-3))
    try:
        gold = _parse_gold(gold_text, configs)
        if not gold:
            return CRASH, None, "math-verify cannot parse the gold answer"
        pred = parse(pred_text, configs, parsing_timeout=None)
        if not pred:
            return FORMAT_ERROR, None, "math-verify extracted no answer"
        same = mv_verify(gold, pred, timeout_seconds=None, **grader)
        return (OK if same else WRONG), _shown(pred), ""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def verify(completion: str, record: Mapping[str, Any], *, timeout_s: float = 10.0,
           answer_format=None, extraction=EXTRACTION, float_rounding: int = 6,
           strict: bool = True, allow_set_relation_comp: bool = False, **options) -> Verdict:
    """Options: ``answer_format`` (None, a name in :data:`.answer_formats.FORMATS` or a tuple
    of names), ``extraction`` (``("latex", "expr")`` or a subset: what math-verify looks for,
    in gold and prediction), and math-verify's own ``float_rounding``, ``strict`` and
    ``allow_set_relation_comp``."""
    if not isolation.active():
        raise RuntimeError("the math verifier parses untrusted text with sympy and runs only in "
                           "isolated workers: score it with verifiers.score or a VerifierPool")
    if not isinstance(completion, str):
        return Verdict(FORMAT_ERROR, detail="completion is not text")
    if len(completion) > MAX_COMPLETION_CHARS:
        return Verdict(FORMAT_ERROR, detail=f"completion longer than {MAX_COMPLETION_CHARS}")
    formats = answer_formats.FORMATS if answer_format is None else (
        (answer_format,) if isinstance(answer_format, str) else tuple(answer_format))
    span, fmt = answer_formats.find(completion, formats)
    if answer_format is not None and span is None:
        return Verdict(FORMAT_ERROR, detail=f"no {'/'.join(formats)} answer")
    whole = answer_format is None and fmt != "answer_tag"
    pred_text = completion if whole else as_answer(span)
    configs = _configs(tuple(extraction))
    try:
        grader = {"float_rounding": int(float_rounding), "strict": bool(strict),
                  "allow_set_relation_comp": bool(allow_set_relation_comp)}
        status, extracted, detail = _judge(str(record["answer"]), pred_text, configs,
                                           timeout_s, grader)
    except _Expired:
        raise TimeoutError(f"math-verify exceeded timeout_s={timeout_s}") from None
    return Verdict(status, 1.0 if status == OK else 0.0, format_ok=span is not None,
                   extracted=extracted, detail=detail or fmt)


def prepare() -> None:
    """Run by an isolated worker before it isolates itself: imports math-verify and judges
    trusted samples that walk its main code paths, so that nothing is left to import lazily
    (the sandbox uid may be unable to read the interpreter's files), and installs the timer's
    signal handler."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # timeouts etc. are ours to report
    signal.signal(signal.SIGALRM, _on_alarm)
    for gold, pred in _WARM_UP:
        _judge(gold, pred, _configs(EXTRACTION), 30.0, {})


verify.prepare = prepare
