"""Verifiable rewards: the registry, math/countdown/code verifiers and the worker-pool bridge.

Public API::

    from reason_jax import verifiers
    verifiers.get("countdown")(completion, record)          # one sample, in-process
    verifiers.score("countdown", completions, records, timeout_s=2.0)   # default pool
    with verifiers.VerifierPool(num_workers=4) as pool:     # what the training loop keeps
        result = pool.score("countdown", completions, records, timeout_s=2.0)
        result.rewards, result.infos, result.status_counts

This package is stdlib-only and never imports JAX (its worker processes must start cheaply).
The ``math`` verifier's judge (math-verify, sympy) is imported only by isolated workers
(:mod:`.isolation`), never by the calling process. See docs/verifiers.md.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import (CRASH, FORMAT_ERROR, OK, STATUSES, TIMEOUT, WRONG, ScoreResult, Verdict,
                   compose)
from .pool import VerifierPool, close_default_pool, default_pool
from .registry import Verifier, get, names, register

__all__ = ["get", "score", "register", "names", "Verifier", "Verdict", "ScoreResult",
           "VerifierPool", "default_pool", "close_default_pool", "compose", "STATUSES", "OK",
           "WRONG", "FORMAT_ERROR", "TIMEOUT", "CRASH"]


def score(name: str, completions: Sequence[str], records: Sequence[Any], *,
          timeout_s: float = 10.0, **options) -> ScoreResult:
    """Scores a batch on the lazily created default :class:`VerifierPool`."""
    return default_pool().score(name, completions, records, timeout_s=timeout_s, **options)
