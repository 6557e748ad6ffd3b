"""The ``countdown`` verifier (the built-in task).

The prompt lists numbers and a target (e.g. ``3,7,9:030=``); the completion is an arithmetic
expression such as ``(3+7)*9``. Also accepted: ``<answer>expr</answer>`` or a last
``Answer: expr`` line; a trailing ``= value`` is ignored. The expression must use exactly the
record's numbers (as a multiset) and evaluate to ``record["target"]``.

The expression is evaluated by a tiny recursive-descent parser over integers: literals,
``+ - * /`` (``/`` only when exact), parentheses, and unary minus only with
``allow_unary_minus=True``. Nothing is eval'd; ``**``/``^`` are rejected as a format error;
length, nesting depth, literal size and intermediate magnitude are all bounded.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .base import FORMAT_ERROR, OK, WRONG, Verdict

MAX_EXPR_CHARS = 256
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 12
MAX_BITS = 256


class _Bad(Exception):
    """Malformed expression (format error)."""


class _Inexact(Exception):
    """Non-exact division / division by zero / value too large (wrong answer)."""


def _tokenize(s: str) -> list[str]:
    toks = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t":
            i += 1
        elif "0" <= c <= "9":
            j = i
            while j < n and "0" <= s[j] <= "9":
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise _Bad("literal too long")
            toks.append(s[i:j])
            i = j
        elif c in "+-*/()":
            if c == "*" and s[i + 1:i + 2] == "*":
                raise _Bad("'**' is not allowed")
            toks.append(c)
            i += 1
        elif c in "\u00d7x":
            toks.append("*")
            i += 1
        elif c == "\u00f7":
            toks.append("/")
            i += 1
        elif c == "\u2212":
            toks.append("-")
            i += 1
        else:
            raise _Bad(f"unexpected character {c!r}")
    return toks


class _Parser:
    def __init__(self, toks, allow_unary_minus):
        self.toks, self.i, self.depth = toks, 0, 0
        self.allow_unary_minus = allow_unary_minus
        self.literals: list[int] = []

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def parse(self) -> int:
        if not self.toks:
            raise _Bad("empty expression")
        v = self.expr()
        if self.peek() is not None:
            raise _Bad("trailing input")
        return v

    def expr(self):
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            w = self.term()
            v = _bound(v + w if op == "+" else v - w)
        return v

    def term(self):
        v = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            w = self.factor()
            if op == "*":
                v = _bound(v * w)
            else:
                if w == 0 or v % w:
                    raise _Inexact("division is not exact")
                v = v // w
        return v

    def factor(self):
        t = self.take()
        if t is None:
            raise _Bad("unexpected end")
        if t == "-" and self.allow_unary_minus:
            self._enter()
            v = -self.factor()
            self.depth -= 1
            return v
        if t == "(":
            self._enter()
            v = self.expr()
            if self.take() != ")":
                raise _Bad("missing ')'")
            self.depth -= 1
            return v
        if t.isdigit():
            self.literals.append(int(t))
            return int(t)
        raise _Bad(f"unexpected token {t!r}")

    def _enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Bad("nesting too deep")


def _bound(v: int) -> int:
    if v.bit_length() > MAX_BITS:
        raise _Inexact("value too large")
    return v


def evaluate(expr: str, allow_unary_minus: bool = False) -> tuple[int, list[int]]:
    """Evaluates a countdown expression -> (value, literals). Raises ValueError subclasses."""
    if len(expr) > MAX_EXPR_CHARS:
        raise _Bad("expression too long")
    p = _Parser(_tokenize(expr), allow_unary_minus)
    return p.parse(), p.literals


def extract_expression(text: str) -> str | None:
    lo = text.rfind("<answer>")
    if lo >= 0:
        hi = text.find("</answer>", lo)
        cand = text[lo + 8:hi if hi >= 0 else len(text)]
    else:
        k = text.rfind("Answer:")
        if k >= 0:
            cand = text[k + 7:]
        else:
            cand = text
    cand = cand.strip()
    if not cand:
        return None
    cand = cand.split("\n", 1)[0]
    if "=" in cand:
        cand = cand.split("=", 1)[0]
    cand = cand.strip().strip("$").strip()
    return cand or None


def verify(completion: str, record: Mapping[str, Any], *, allow_unary_minus: bool = False,
           **options) -> Verdict:
    numbers = [int(x) for x in record["numbers"]]
    target = int(record["target"])
    if not isinstance(completion, str):
        return Verdict(FORMAT_ERROR, detail="completion is not text")
    expr = extract_expression(completion[:100_000])
    if expr is None:
        return Verdict(FORMAT_ERROR, detail="no expression")
    try:
        value, literals = evaluate(expr, allow_unary_minus)
    except _Bad as e:
        return Verdict(FORMAT_ERROR, extracted=expr, detail=str(e))
    except _Inexact as e:
        return Verdict(WRONG, format_ok=True, extracted=expr, detail=str(e))
    if Counter(literals) != Counter(numbers):
        return Verdict(WRONG, format_ok=True, extracted=expr,
                       detail=f"numbers used {sorted(literals)} != given {sorted(numbers)}")
    if value != target:
        return Verdict(WRONG, format_ok=True, extracted=expr, detail=f"value {value} != {target}")
    return Verdict(OK, 1.0, format_ok=True, extracted=expr, detail="")
