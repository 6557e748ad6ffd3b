"""How cases.json was made: a pytest plugin that runs math-verify's own test suite and records
every (gold, prediction, expected) case with the options it was judged with.

    pip download --no-deps --no-binary :all: math-verify==0.9.0
    tar xzf math_verify-0.9.0.tar.gz && cd math_verify-0.9.0
    PYTHONPATH=/path/to/tests/data/math_verify_0.9.0 python -m pytest -q -p record_cases tests

writes cases.json into the current directory. Cases come from the tests' `compare_strings`
helper (extraction kinds, float rounding, strict, allow_set_relation_comp) and from
tests/test_yujianll.py (`verify(parse(gold), parse(pred))`, math-verify's parse defaults,
stored as extraction ["latex", "expr"]). A parametrized case's expectation is its parameter;
a case of a plain test is recorded only when that test passed, with the result it asserted.
Not a test module (not collected by reason-jax's pytest run).
"""

import json

import pytest

_cases = []
_current: dict = {}


def pytest_collection_modifyitems(session, config, items):
    import tests.test_all as t
    original = t.compare_strings

    def compare_strings(gold, pred, match_types=("latex", "expr"), precision=6, strict=True,
                        allow_set_relation_comp=False):
        res = original(gold, pred, match_types=list(match_types), precision=precision,
                       strict=strict, allow_set_relation_comp=allow_set_relation_comp)
        _current.setdefault("calls", []).append(dict(
            gold=gold, pred=pred, extraction=list(match_types), float_rounding=precision,
            strict=strict, allow_set_relation_comp=allow_set_relation_comp, result=bool(res)))
        return res

    for item in items:  # the modules imported compare_strings by name
        if hasattr(item.module, "compare_strings"):
            item.module.compare_strings = compare_strings
    yujianll = next(item.module for item in items if "yujianll" in item.nodeid)
    verify, parse = yujianll.verify, yujianll.parse

    def recording_parse(text):
        _current.setdefault("parsed", []).append(text)
        return parse(text)

    def recording_verify(gold, pred):
        res = verify(gold, pred)
        g, p = _current["parsed"][:2]
        _current.setdefault("calls", []).append(dict(
            gold=g, pred=p, extraction=["latex", "expr"], float_rounding=6, strict=True,
            allow_set_relation_comp=False, result=bool(res)))
        return res

    yujianll.parse, yujianll.verify = recording_parse, recording_verify


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current.clear()
    outcome = yield
    params = getattr(getattr(item, "callspec", None), "params", {})
    calls = _current.get("calls", [])
    for call in calls:
        if len(calls) == 1 and ("expected" in params or "result" in params):
            expected = params.get("expected", params.get("result"))
        elif outcome.excinfo is None:
            expected = call["result"]
        else:
            continue
        case = {k: v for k, v in call.items() if k != "result"}
        _cases.append(dict(case, expected=bool(expected), test=item.nodeid.split("[")[0]))


def pytest_sessionfinish(session):
    seen, cases = set(), []
    for c in _cases:
        key = (c["gold"], c["pred"], tuple(c["extraction"]), c["float_rounding"], c["strict"],
               c["allow_set_relation_comp"])
        if key not in seen:
            seen.add(key)
            cases.append({k: c[k] for k in ("gold", "pred", "expected", "extraction",
                                            "float_rounding", "strict",
                                            "allow_set_relation_comp", "test")})
    header = {
        "source": "math-verify 0.9.0 sdist (https://pypi.org/project/math-verify/0.9.0/), "
                  "tests/*.py: every (gold, prediction, expected) case judged through "
                  "compare_strings or parse+verify",
        "licence": "Apache-2.0 (LICENCE in this directory); the test files carry the notice "
                   "'MIT License, Copyright (c) 2024 The HuggingFace Team'",
        "note": "extraction [\"default\"] (math-verify's parse() defaults, in "
                "tests/test_yujianll.py) is stored as [\"latex\", \"expr\"]",
    }
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    lines.append(' "cases": [')
    lines += ["  " + json.dumps(c, ensure_ascii=False) + ("," if i < len(cases) - 1 else "")
              for i, c in enumerate(cases)]
    lines += [" ]", "}"]
    with open("cases.json", "w") as f:
        f.write("\n".join(lines) + "\n")
