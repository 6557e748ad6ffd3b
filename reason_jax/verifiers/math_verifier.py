"""The ``math`` verifier: extract a final answer and compare it with ``record["answer"]``.

Answer formats, in order of precedence: the last ``<answer>...</answer>`` block, the last
``\\boxed{...}`` (nested braces; a box inside a box is unwrapped), the last ``Answer: ...``
line (DAPO), the last ``#### n`` (GSM8K). Equivalence is decided by
:func:`reason_jax.verifiers.mathexpr.answers_match` (no eval, exact fractions, bounded).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .base import FORMAT_ERROR, OK, WRONG, Verdict
from .mathexpr import answers_match

MAX_ANSWER_CHARS = 1000
_BOX_RE = re.compile(r"\\(?:boxed|fbox)")


def _boxes(text: str) -> list[str]:
    """Contents of the top-level \\boxed{...} / \\fbox{...} groups, left to right."""
    out = []
    pos = 0
    n = len(text)
    while True:
        m = _BOX_RE.search(text, pos)
        if not m:
            return out
        i = m.end()
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == "{":
            depth = 0
            j = i
            while j < n:
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:  # unbalanced: not an answer
                return out
            out.append(text[i + 1:j])
            pos = j + 1
        else:  # "\boxed 5"
            k = i
            while k < n and not text[k].isspace() and text[k] != "$":
                k += 1
            if k > i:
                out.append(text[i:k])
            pos = max(k, m.end())


def _unbox(s: str) -> str:
    for _ in range(10):
        b = _boxes(s)
        if not b:
            break
        s = b[-1]
    return s


def extract_answer(text: str) -> tuple[str | None, str]:
    """Returns (answer, format_name) with format_name in {answer_tag, boxed, answer_line,
    gsm8k, none}."""
    lo = text.rfind("<answer>")
    if lo >= 0:
        hi = text.find("</answer>", lo)
        if hi >= 0:
            return _unbox(text[lo + 8:hi]).strip(), "answer_tag"
    boxes = _boxes(text)
    if boxes:
        return _unbox(boxes[-1]).strip(), "boxed"
    low = text.lower()
    k = low.rfind("answer:")
    if k >= 0:
        line = text[k + 7:].split("\n", 1)[0]
        ans = _unbox(line).strip().strip("$").strip()
        if ans:
            return ans, "answer_line"
    k = text.rfind("####")
    if k >= 0:
        ans = text[k + 4:].strip().split("\n", 1)[0].strip()
        if ans:
            return ans, "gsm8k"
    return None, "none"


def verify(completion: str, record: Mapping[str, Any], **options) -> Verdict:
    gold = str(record["answer"])
    gold_boxed = _boxes(gold)
    if gold_boxed:
        gold = _unbox(gold_boxed[-1])
    if not isinstance(completion, str):
        return Verdict(FORMAT_ERROR, detail="completion is not text")
    ans, fmt = extract_answer(completion)
    if ans is None or not ans:
        return Verdict(FORMAT_ERROR, detail="no final answer found")
    if len(ans) > MAX_ANSWER_CHARS:
        return Verdict(WRONG, format_ok=True, extracted=ans, detail=f"{fmt}: answer too long")
    if answers_match(ans, gold):
        return Verdict(OK, 1.0, format_ok=True, extracted=ans, detail=fmt)
    return Verdict(WRONG, 0.0, format_ok=True, extracted=ans, detail=fmt)
