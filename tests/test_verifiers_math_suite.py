"""math-verify's own test cases, judged by the `math` verifier through isolated workers.

tests/data/math_verify_0.9.0/cases.json holds every (gold, prediction, expected) case of the
math-verify 0.9.0 sdist's tests (Apache-2.0, licence alongside; record_cases.py made it) with
the extraction and grading options each case was written for. Targets: >= 98% agreement and
no false positive, judged with each case's options; with the verifier's defaults for all
(one configuration, as a training run uses) the agreement is printed.
"""

import collections
import json
import os

import pytest

from reason_jax.verifiers import VerifierPool

CASES = json.load(open(os.path.join(os.path.dirname(__file__), "data", "math_verify_0.9.0",
                                    "cases.json")))["cases"]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2) as p:
        yield p


def _judge(pool, per_case_options: bool):
    """One `score` call per distinct option set; returns the infos in case order."""
    groups = collections.defaultdict(list)
    for k, c in enumerate(CASES):
        opts = (tuple(c["extraction"]), c["float_rounding"], c["strict"],
                c["allow_set_relation_comp"]) if per_case_options else ()
        groups[opts].append(k)
    infos = [None] * len(CASES)
    for opts, ks in groups.items():
        kw = dict(zip(("extraction", "float_rounding", "strict", "allow_set_relation_comp"),
                      opts))
        res = pool.score("math", [CASES[k]["pred"] for k in ks],
                         [{"answer": CASES[k]["gold"]} for k in ks], timeout_s=10.0, **kw)
        for k, info in zip(ks, res.infos):
            infos[k] = info
    return infos


def _report(infos):
    agree = sum((i["status"] == "ok") == c["expected"] for i, c in zip(infos, CASES))
    false_pos = [c for i, c in zip(infos, CASES) if i["status"] == "ok" and not c["expected"]]
    return agree / len(CASES), false_pos


def test_math_verify_suite(pool, capsys):
    assert len(CASES) >= 250
    infos = _judge(pool, per_case_options=True)
    # Every case is judged by math-verify itself: no crash, no timeout (a crash could be a
    # module the sandbox uid failed to import lazily).
    assert {i["status"] for i in infos} <= {"ok", "wrong", "format_error"}, \
        [i for i in infos if i["status"] not in ("ok", "wrong", "format_error")][:3]
    agreement, false_pos = _report(infos)
    d_agreement, d_false_pos = _report(_judge(pool, per_case_options=False))
    with capsys.disabled():
        print(f"\n[math-verify suite] {len(CASES)} cases: {agreement:.1%} agreement, "
              f"{len(false_pos)} false positives (each case's options); defaults for all: "
              f"{d_agreement:.1%}, {len(d_false_pos)} false positives")
    assert agreement >= 0.98
    assert not false_pos
    assert d_agreement >= 0.95
