"""Explicit final-answer formats: ``<answer>...</answer>``, ``\\boxed{...}``, ``Answer: ...``
(DAPO), ``#### n`` (GSM8K).

A recipe that demands a format (``answer_format=``) gets its answer span from here; the
``math`` verifier then has math-verify judge that span. Without a demanded format these only
decide ``format_ok`` (the format reward). Linear-time scanners; stdlib only, nothing parsed.
"""

from __future__ import annotations

import re

FORMATS = ("answer_tag", "boxed", "answer_line", "gsm8k")  # also the precedence of `find`
_BOX_RE = re.compile(r"\\(?:boxed|fbox)")


def boxes(text: str) -> list[str]:
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
        b = boxes(s)
        if not b:
            break
        s = b[-1]
    return s


def _answer_tag(text: str) -> str | None:
    lo = text.rfind("<answer>")
    if lo >= 0:
        hi = text.find("</answer>", lo)
        if hi >= 0:
            return _unbox(text[lo + 8:hi]).strip() or None
    return None


def _boxed(text: str) -> str | None:
    b = boxes(text)
    return (_unbox(b[-1]).strip() or None) if b else None


def _answer_line(text: str) -> str | None:
    k = text.lower().rfind("answer:")
    if k >= 0:
        line = text[k + 7:].split("\n", 1)[0]
        return _unbox(line).strip() or None
    return None


def _gsm8k(text: str) -> str | None:
    k = text.rfind("####")
    if k >= 0:
        return text[k + 4:].strip().split("\n", 1)[0].strip() or None
    return None


_FINDERS = {"answer_tag": _answer_tag, "boxed": _boxed, "answer_line": _answer_line,
            "gsm8k": _gsm8k}


def find(text: str, formats=FORMATS) -> tuple[str | None, str]:
    """(answer span, format name) for the first of ``formats`` present in ``text`` (within
    one format the last occurrence counts; a box inside a box is unwrapped), or
    ``(None, "none")``."""
    for name in formats:
        if name not in _FINDERS:
            raise ValueError(f"unknown answer format {name!r}; one of {FORMATS}")
        span = _FINDERS[name](text)
        if span is not None:
            return span, name
    return None, "none"
