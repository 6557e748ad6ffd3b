"""A restricted math-answer parser: LaTeX-ish text -> exact ``Fraction`` arithmetic.

Nothing here calls eval/exec/compile/ast/sympy on model text. The pipeline is
``normalize`` (string rewriting of LaTeX into a tiny plain grammar) -> ``tokenize`` ->
a recursive-descent ``parse`` into tuples -> ``evaluate`` with exact fractions (floats only
for sqrt, pi and non-integer powers). Every stage is bounded: input length, bracket nesting
(checked *before* any recursion), exponent magnitude and the bit size of every intermediate
value, so adversarial answers such as ``9^9^9^9``, 10,000 nested parentheses or a 1 MB string
fail fast with :class:`MathParseError`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_CHARS = 1000          # longest answer we try to normalise
MAX_PARSE_CHARS = 400     # longest normalised expression we parse (bounds tree depth too)
MAX_DEPTH = 40            # deepest bracket nesting
MAX_BITS = 4096           # largest numerator/denominator of any intermediate value
MAX_EXPONENT = 1024       # largest |integer exponent|
MAX_NODES = 2000          # largest expression tree
FLOAT_REL_TOL = 1e-9


class MathParseError(ValueError):
    pass


# --------------------------------------------------------------------------- normalisation

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u22c5": "*", "\u00b7": "*",
            "\u00f7": "/", "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u00b0": "",
            "\u2009": " ", "\u00a0": " ", "\u202f": " "}
_DROP = ("\\left", "\\right", "\\displaystyle", "\\textstyle", "\\bigl", "\\bigr", "\\Bigl",
         "\\Bigr", "\\big", "\\Big", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\quad", "\\qquad",
         "\\(", "\\)", "\\[", "\\]", "\\$", "$", "^\\circ", "^{\\circ}", "\\circ", "\\%", "%", "~")
_TEXT_CMDS = ("\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mbox", "\\mathbf", "\\operatorname")
# Written without nested quantifiers over the same characters (no catastrophic backtracking).
_UNIT_RE = re.compile(r"^([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+))\s*"
                      r"([a-zA-Z]+\.?(?:\^?\d)?(?:\s+[a-zA-Z]+\.?(?:\^?\d)?)*)\s*$")
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_ASSIGN_RE = re.compile(r"^[a-zA-Z](?:_\w+)?\s*=([^=]*)$")


def _check_nesting(s: str) -> None:
    depth = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            if depth > MAX_DEPTH:
                raise MathParseError("nesting too deep")
        elif ch in ")}]":
            depth -= 1


def _match_brace(s: str, i: int) -> int:
    """s[i] == '{'; returns the index of the matching '}' (or raises)."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise MathParseError("unbalanced braces")


def _latex_arg(s: str, i: int) -> tuple[str, int]:
    """Reads one LaTeX macro argument starting at s[i] (skipping spaces): {...} or one char."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise MathParseError("missing argument")
    if s[i] == "{":
        j = _match_brace(s, i)
        return s[i + 1:j], j + 1
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _rewrite_macros(s: str, depth: int = 0) -> str:
    """\\frac{a}{b} -> ((a)/(b)), \\sqrt{a} -> sqrt(a), \\text{a} -> a (recursively)."""
    if depth > MAX_DEPTH:
        raise MathParseError("nesting too deep")
    out = []
    i = 0
    n = len(s)
    while i < n:
        if s.startswith("\\frac", i) and not s[i + 5:i + 6].isalpha():
            a, i = _latex_arg(s, i + 5)
            b, i = _latex_arg(s, i)
            out.append("((%s)/(%s))" % (_rewrite_macros(a, depth + 1), _rewrite_macros(b, depth + 1)))
            continue
        if s.startswith("\\sqrt", i) and not s[i + 5:i + 6].isalpha():
            j = i + 5
            if j < n and s[j] == "[":
                raise MathParseError("n-th roots are not supported")
            a, i = _latex_arg(s, j)
            out.append("sqrt(%s)" % _rewrite_macros(a, depth + 1))
            continue
        for cmd in _TEXT_CMDS:
            if s.startswith(cmd, i) and not s[i + len(cmd):i + len(cmd) + 1].isalpha():
                a, i = _latex_arg(s, i + len(cmd))
                out.append(_rewrite_macros(a, depth + 1))
                break
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def normalize(answer: str) -> str:
    """Normalises an answer string into the plain grammar (or a cleaned-up text answer)."""
    if len(answer) > MAX_CHARS:
        raise MathParseError("answer too long")
    s = answer.replace("\x00", "")
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.strip()
    s = s.replace("{,}", ",")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for d in _DROP:
        s = s.replace(d, " " if d.startswith("\\") and d[1:2].isalpha() else "")
    # "\text{ cm}" style units after a number: drop the text block entirely.
    s = re.sub(r"(\d)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z ]*\}\s*$", r"\1", s)
    _check_nesting(s)
    s = _rewrite_macros(s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = s.replace("\\pi", " pi ").replace("**", "^")
    s = s.replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")")
    s = s.strip().rstrip(".").strip()
    m = _ASSIGN_RE.match(s)
    if m:
        s = m.group(1).strip()
    m = _UNIT_RE.match(s)
    if m and m.group(2).strip().rstrip(".") not in ("pi",):
        s = m.group(1)
    s = _THOUSANDS_RE.sub(lambda mm: mm.group(0).replace(",", ""), s)
    s = re.sub(r"\s+", "", s)
    if s.endswith(".0") and re.fullmatch(r"[-+]?\d+\.0+", s):
        s = s.split(".")[0]
    return s


# --------------------------------------------------------------------------- tokenizer / parser

_TOKEN_RE = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|([a-zA-Z]+)|(.))")
_FUNCS = ("sqrt",)
_CONSTS = ("pi",)


def tokenize(s: str) -> list[tuple[str, str]]:
    if len(s) > MAX_PARSE_CHARS:
        raise MathParseError("too long")
    _check_nesting(s)
    toks = []
    for m in _TOKEN_RE.finditer(s):
        num, ident, other = m.groups()
        if num is not None:
            toks.append(("num", num))
        elif ident is not None:
            if ident in _FUNCS:
                toks.append(("func", ident))
            elif ident in _CONSTS:
                toks.append(("const", ident))
            elif len(ident) == 1:
                toks.append(("var", ident))
            else:
                raise MathParseError(f"unknown word {ident[:20]!r}")
        elif other is not None:
            if other.isspace():
                continue
            if other not in "+-*/^()":
                raise MathParseError(f"unexpected character {other!r}")
            toks.append(("op", other))
    return toks


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := ('+'|'-') unary | power ; power := atom ('^' unary)? ;
    atom := num | var | const | func '(' expr ')' | '(' expr ')'"""

    def __init__(self, toks):
        self.toks = toks
        self.i = 0
        self.depth = 0
        self.nodes = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def node(self, *n):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise MathParseError("expression too large")
        return n

    def parse(self):
        if not self.toks:
            raise MathParseError("empty")
        e = self.expr()
        if self.peek()[0] != "eof":
            raise MathParseError("trailing input")
        return e

    def expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH * 2:
            raise MathParseError("too deep")
        e = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            e = self.node(op, e, self.term())
        self.depth -= 1
        return e

    def term(self):
        e = self.unary()
        while True:
            t = self.peek()
            if t in (("op", "*"), ("op", "/")):
                self.take()
                e = self.node(t[1], e, self.unary())
            elif t[0] in ("num", "var", "const", "func") or t == ("op", "("):
                e = self.node("*", e, self.power())  # implicit multiplication: 2x, 2(3), x y
            else:
                return e

    def unary(self):
        t = self.peek()
        if t in (("op", "-"), ("op", "+")):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH * 2:
                raise MathParseError("too deep")
            inner = self.unary()
            self.depth -= 1
            return self.node("neg", inner) if t[1] == "-" else inner
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH * 2:
                raise MathParseError("too deep")
            exp = self.unary()
            self.depth -= 1
            return self.node("^", base, exp)
        return base

    def atom(self):
        kind, val = self.take()
        if kind == "num":
            return self.node("num", Fraction(val))
        if kind == "var":
            return self.node("var", val)
        if kind == "const":
            return self.node("const", val)
        if kind == "func":
            if self.take() != ("op", "("):
                raise MathParseError("function needs (")
            arg = self.expr()
            if self.take() != ("op", ")"):
                raise MathParseError("missing )")
            return self.node("func", val, arg)
        if (kind, val) == ("op", "("):
            e = self.expr()
            if self.take() != ("op", ")"):
                raise MathParseError("missing )")
            return e
        raise MathParseError(f"unexpected token {val!r}")


def parse(s: str):
    return _Parser(tokenize(s)).parse()


def variables(tree, acc=None) -> set:
    acc = set() if acc is None else acc
    stack = [tree]
    while stack:
        n = stack.pop()
        if n[0] == "var":
            acc.add(n[1])
        elif n[0] in ("+", "-", "*", "/", "^"):
            stack.extend((n[1], n[2]))
        elif n[0] == "neg":
            stack.append(n[1])
        elif n[0] == "func":
            stack.append(n[2])
    return acc


# --------------------------------------------------------------------------- evaluation

def _check(v):
    if isinstance(v, Fraction):
        if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
            raise MathParseError("value too large")
    elif not math.isfinite(v):
        raise MathParseError("value not finite")
    return v


def _pow(b, e):
    if isinstance(e, Fraction) and e.denominator == 1:
        k = e.numerator
        if abs(k) > MAX_EXPONENT:
            raise MathParseError("exponent too large")
        if isinstance(b, Fraction):
            bits = max(b.numerator.bit_length(), b.denominator.bit_length())
            if bits * abs(k) > MAX_BITS:
                raise MathParseError("power too large")
            if b == 0 and k < 0:
                raise ZeroDivisionError
            return b ** k
    bf, ef = float(b), float(e)
    if bf < 0:
        raise MathParseError("fractional power of a negative number")
    if bf == 0:
        if ef <= 0:
            raise ZeroDivisionError
        return 0.0
    if abs(ef * math.log(bf)) > 700:
        raise MathParseError("power too large")
    return bf ** ef


def evaluate(tree, env=None):
    """Evaluates a parsed tree; values are Fraction (exact) or float (sqrt/pi/roots)."""
    env = env or {}
    op = tree[0]
    if op == "num":
        return tree[1]
    if op == "var":
        if tree[1] not in env:
            raise MathParseError("free variable")
        return env[tree[1]]
    if op == "const":
        return math.pi
    if op == "neg":
        return -evaluate(tree[1], env)
    if op == "func":
        a = evaluate(tree[2], env)
        if a < 0:
            raise MathParseError("sqrt of a negative number")
        if isinstance(a, Fraction):
            rn, rd = math.isqrt(a.numerator), math.isqrt(a.denominator)
            if rn * rn == a.numerator and rd * rd == a.denominator:
                return Fraction(rn, rd)
        return _check(math.sqrt(a))
    a = evaluate(tree[1], env)
    b = evaluate(tree[2], env)
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op == "/":
        if b == 0:
            raise ZeroDivisionError
        r = a / b
    else:
        r = _pow(a, b)
    if isinstance(r, Fraction) or isinstance(r, float):
        return _check(r)
    return _check(Fraction(r))


def values_equal(a, b) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=FLOAT_REL_TOL, abs_tol=1e-12)


_POINTS = (Fraction(7, 3), Fraction(-5, 11), Fraction(13, 17), Fraction(3, 2))


def _split_top_commas(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _strip_outer_parens(s: str) -> str:
    if len(s) >= 2 and s[0] == "(" and s[-1] == ")" and "," in s:
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(s) - 1:
                return s
        return s[1:-1]
    return s


def _expr_equal(p: str, g: str) -> bool:
    tp, tg = parse(p), parse(g)
    vs = variables(tp) | variables(tg)
    if not vs:
        return values_equal(evaluate(tp), evaluate(tg))
    if len(vs) > 4:
        return False
    names = sorted(vs)
    checked = 0
    for k in range(len(_POINTS)):
        env = {v: _POINTS[(k + j) % len(_POINTS)] + j for j, v in enumerate(names)}
        try:
            vp, vg = evaluate(tp, env), evaluate(tg, env)
        except ZeroDivisionError:
            continue
        if not values_equal(vp, vg):
            return False
        checked += 1
    return checked > 0


def _canon_text(s: str) -> str:
    return re.sub(r"\s+", "", s).lower().strip(".")


def answers_match(pred: str, gold: str) -> bool:
    """True when the predicted answer is equivalent to the gold answer. Never raises."""
    try:
        if len(pred) > MAX_CHARS:
            return False
        if _canon_text(pred) == _canon_text(gold):
            return True
        p, g = normalize(pred), normalize(gold)
        if p == g and p:
            return True
        p, g = _strip_outer_parens(p), _strip_outer_parens(g)
        pp, gp = _split_top_commas(p), _split_top_commas(g)
        if len(pp) != len(gp):
            return False
        return all(_expr_equal(a, b) for a, b in zip(pp, gp))
    except (MathParseError, ZeroDivisionError, OverflowError, ValueError, RecursionError):
        return False
