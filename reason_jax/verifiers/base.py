"""The verifier contract: statuses, verdicts and reward composition.

A verifier is a plain function ``fn(completion: str, record: Mapping, **options) -> Verdict``
(it may also return a bare float: the reward as is, status ``ok`` only at full credit). The bridge turns a
verdict into a reward and a per-sample ``info`` dict with :func:`compose`. This module is
stdlib-only and must never import JAX: it is imported by the verifier worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

OK = "ok"
WRONG = "wrong"
FORMAT_ERROR = "format_error"
TIMEOUT = "timeout"
CRASH = "crash"
STATUSES = (OK, WRONG, FORMAT_ERROR, TIMEOUT, CRASH)

# `extracted` and `detail` are truncated to this many characters in infos, so that a 1 MB
# adversarial answer never travels back through the pool or into the metrics.
MAX_INFO_CHARS = 200

@dataclasses.dataclass
class Verdict:
    """What a verifier decides about one completion.

    status: one of ``ok`` (fully correct), ``wrong`` (parsed but not (fully) correct) and
      ``format_error`` (no answer could be extracted/parsed). ``timeout``/``crash`` are set by
      the bridge (a verifier may also return them, e.g. the code sandbox on a timed-out test).
    fraction: correctness in [0, 1] (1.0 for ok, 0.0 for wrong; fraction of tests passed for
      code).
    format_ok: whether the completion followed the answer format (drives ``format_reward``).
    extracted: the extracted answer (text), or None.
    detail: a short human-readable reason.
    """

    status: str
    fraction: float = 0.0
    format_ok: bool = False
    extracted: str | None = None
    detail: str = ""


def _clip(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_INFO_CHARS:
        return text[:MAX_INFO_CHARS] + "...[+%d chars]" % (len(text) - MAX_INFO_CHARS)
    return text


def failure_info(status: str, detail: str = "", options: Mapping[str, Any] | None = None) -> dict:
    """Info for a sample the bridge could not score (timeout/crash): reward 0 by default."""
    reward = float((options or {}).get("failure_reward", 0.0))
    return {"status": status, "reward": reward, "extracted": None,
            "components": {"correctness": reward, "format": 0.0}, "detail": _clip(detail)}


def compose(verdict: Any, options: Mapping[str, Any]) -> dict:
    """Turns a verifier's return value into a per-sample info dict with the final ``reward``.

    reward = correctness + format, where
      correctness = wrong_reward + (correct_reward - wrong_reward) * fraction   (ok / wrong,
                    and a timeout reported by the verifier itself, e.g. one code test)
                  = format_error_reward (default: wrong_reward)                  (format_error)
                  = failure_reward (default 0)                                   (crash; and the
                    bridge's own timeout/crash via failure_info)
      format      = format_reward if verdict.format_ok else 0.
    With ``all_or_nothing=True`` a fraction below 1 counts as 0.
    """
    if isinstance(verdict, (int, float)) and not isinstance(verdict, bool):
        # A bare float is the reward as is (graded verifiers). It counts as correct only at
        # full credit: "ok" for any float would make accuracy 1 for every sample and blind
        # dynamic sampling's accuracy filter.
        r = float(verdict)
        full = r >= float(options.get("correct_reward", 1.0))
        return {"status": OK if full else WRONG, "reward": r, "extracted": None,
                "components": {"correctness": r, "format": 0.0}, "detail": ""}
    if not isinstance(verdict, Verdict):
        raise TypeError(f"verifier returned {type(verdict).__name__}, expected Verdict or float")
    correct = float(options.get("correct_reward", 1.0))
    wrong = float(options.get("wrong_reward", 0.0))
    fmt_w = float(options.get("format_reward", 0.0))
    status = verdict.status
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    frac = min(1.0, max(0.0, float(verdict.fraction)))
    if options.get("all_or_nothing", False) and frac < 1.0:
        frac = 0.0
    if status in (OK, WRONG, TIMEOUT):
        # A verifier-reported timeout (e.g. one code test ran out of time) keeps the partial
        # credit of the tests that passed; a bridge-level timeout never gets here.
        correctness = wrong + (correct - wrong) * frac
    elif status == FORMAT_ERROR:
        correctness = float(options.get("format_error_reward", wrong))
    else:  # crash reported by the verifier itself
        correctness = float(options.get("failure_reward", 0.0))
    fmt = fmt_w if verdict.format_ok else 0.0
    return {"status": status, "reward": correctness + fmt, "extracted": _clip(verdict.extracted),
            "components": {"correctness": correctness, "format": fmt},
            "detail": _clip(verdict.detail)}


def outcome_of(result: Any) -> list:
    """What a worker sends back for one sample (JSON-able, so the parent never unpickles what
    a possibly compromised worker wrote): ``["v", status, fraction, format_ok, extracted,
    detail]`` for a Verdict, ``["r", reward]`` for a bare float."""
    if isinstance(result, Verdict):
        extracted = None if result.extracted is None else _clip(str(result.extracted))
        return ["v", str(result.status), float(result.fraction), bool(result.format_ok),
                extracted, _clip(str(result.detail))]
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return ["r", float(result)]
    raise TypeError(f"verifier returned {type(result).__name__}, expected Verdict or float")


def failure_outcome(status: str, detail: str) -> list:
    return ["f", status, _clip(detail)]


def info_from_outcome(outcome: Any, options: Mapping[str, Any], *, isolated: bool) -> dict:
    """The parent turns a worker's outcome into the sample's info, checking it on the way: a
    malformed outcome is a ``crash``, and an isolated worker (whose verifier parses untrusted
    text) may only report verdicts, so the reward always comes from the parent's options."""
    try:
        kind = outcome[0]
        if kind == "v":
            status, fraction, format_ok, extracted, detail = outcome[1:6]
            if extracted is not None and not isinstance(extracted, str):
                raise TypeError("extracted")
            return compose(Verdict(str(status), float(fraction), bool(format_ok), extracted,
                                   str(detail)), options)
        if kind == "f" and outcome[1] in (TIMEOUT, CRASH):
            return failure_info(outcome[1], str(outcome[2]), options)
        if kind == "r" and not isolated:
            return compose(float(outcome[1]), options)
        raise ValueError(f"outcome kind {kind!r}")
    except (TypeError, ValueError, IndexError, KeyError) as e:
        return failure_info(CRASH, f"malformed worker reply: {e}", options)


@dataclasses.dataclass
class ScoreResult:
    """Result of scoring a batch.

    rewards: N floats. infos: N dicts with ``status``, ``reward``, ``extracted``,
    ``components`` (dict name -> value; the values sum to the reward), ``detail``.
    status_counts: status -> count over the batch (every status present, possibly 0).
    """

    rewards: list
    infos: list
    status_counts: dict
    elapsed_s: float = 0.0

    @classmethod
    def from_infos(cls, infos: list, elapsed_s: float = 0.0) -> "ScoreResult":
        counts = {s: 0 for s in STATUSES}
        for info in infos:
            counts[info["status"]] = counts.get(info["status"], 0) + 1
        return cls(rewards=[float(i["reward"]) for i in infos], infos=infos,
                   status_counts=counts, elapsed_s=elapsed_s)

    def metrics(self, prefix: str = "verifier/") -> dict:
        """Flat training metrics: fraction of samples per status, plus mean reward."""
        n = max(1, len(self.rewards))
        out = {f"{prefix}{s}_frac": c / n for s, c in self.status_counts.items()}
        out[f"{prefix}reward_mean"] = sum(self.rewards) / n
        return out
