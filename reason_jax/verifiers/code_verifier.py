"""The ``code`` verifier: run a generated Python program against the record's tests.

The program is the last fenced ```python (or ```py / plain ```) block of the completion, else
the whole completion. Record fields: ``tests`` (a list of ``{"input": str, "output": str}``
stdin/stdout cases; outputs are compared after stripping trailing whitespace on every line)
and/or ``test_code`` (assert-style code appended to the program and run once; it passes when
the process exits 0). Each case runs in a fresh sandboxed process (:mod:`.sandbox`); all cases
of one sample share its ``timeout_s`` budget. Score = fraction of cases passed
(``all_or_nothing=True``: 1 only if all pass, and stop at the first failure).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from . import sandbox
from .base import FORMAT_ERROR, OK, TIMEOUT, WRONG, Verdict

MAX_PROGRAM_CHARS = 100_000


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each ``` fenced block; a line scanner (linear time, no regex)."""
    blocks = []
    lang, body = None, []
    for line in text.split("\n"):
        stripped = line.strip()
        if lang is None:
            if stripped.startswith("```"):
                words = stripped[3:].split()
                lang = words[0].lower() if words else ""
                body = []
        elif stripped.startswith("```"):
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        elif stripped.endswith("```"):  # closing fence glued to the last code line
            body.append(line.rstrip()[:-3])
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    return blocks


def extract_program(text: str) -> tuple[str, bool]:
    """Returns (program, fenced): the last ```python block, else the last plain ``` block,
    else the whole text."""
    blocks = _fenced_blocks(text)
    py = [b for lang, b in blocks if lang in ("python", "py", "python3")]
    if py:
        return py[-1], True
    plain = [b for lang, b in blocks if not lang]
    if plain:
        return plain[-1], True
    return text, False


def _norm_output(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip().splitlines())


def verify(completion: str, record: Mapping[str, Any], *, timeout_s: float = 10.0,
           all_or_nothing: bool = False, memory_mb: int = 1024,
           max_output_bytes: int = 1 << 20, **options) -> Verdict:
    if not isinstance(completion, str):
        return Verdict(FORMAT_ERROR, detail="completion is not text")
    if len(completion) > 4 * MAX_PROGRAM_CHARS:
        return Verdict(FORMAT_ERROR, detail="completion too long")
    program, fenced = extract_program(completion)
    if not program.strip():
        return Verdict(FORMAT_ERROR, detail="no program")
    if len(program) > MAX_PROGRAM_CHARS:
        return Verdict(FORMAT_ERROR, extracted=program, detail="program too long")
    cases: list[tuple[str, str, str | None]] = []  # (source, stdin, expected stdout or None)
    for t in record.get("tests") or []:
        cases.append((program, str(t.get("input", "")), str(t.get("output", ""))))
    if record.get("test_code"):
        cases.append((program + "\n\n" + str(record["test_code"]) + "\n", "", None))
    if not cases:
        raise ValueError("code record has neither 'tests' nor 'test_code'")
    sandbox.get_config()  # the one-off isolation probe does not eat into the first test's time
    deadline = time.monotonic() + float(timeout_s)
    passed = 0
    timed_out = False
    details = []
    for k, (src, stdin, expected) in enumerate(cases):
        budget = deadline - time.monotonic()
        if budget <= 0.01:
            timed_out = True
            details.append(f"case {k}: no time left")
            break
        res = sandbox.run_program(src, stdin.encode("utf-8", "surrogatepass"), timeout_s=budget,
                                  memory_mb=memory_mb, max_output_bytes=max_output_bytes)
        if res.timed_out:
            timed_out = True
            details.append(f"case {k}: timeout")
            break
        if res.output_exceeded:
            ok = False
            details.append(f"case {k}: output limit")
        elif expected is None:
            ok = res.returncode == 0
        else:
            ok = res.returncode == 0 and _norm_output(
                res.stdout.decode("utf-8", "replace")) == _norm_output(expected)
        if ok:
            passed += 1
        else:
            if len(details) < 3 and not res.output_exceeded:
                tail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                details.append(f"case {k}: rc={res.returncode} {tail[0][:80]}")
            if all_or_nothing:
                break
    frac = passed / len(cases)
    status = OK if passed == len(cases) else (TIMEOUT if timed_out else WRONG)
    return Verdict(status, frac, format_ok=fenced, extracted=program,
                   detail=f"{passed}/{len(cases)} passed" + ("; " + "; ".join(details) if details else ""))
