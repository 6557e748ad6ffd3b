"""Test-only verifiers, imported by the pool's worker processes by path
("test_verifiers_helpers:flaky"). Kept free of heavy imports (no pytest) so that a worker
replaced after a timeout starts quickly. Contains no tests."""

import os
import time


def flaky(completion, record, **options):
    """Behaves as the completion says: hang (busy loop), sleep, crash, exit, die, else 1.0."""
    if completion == "hang":
        while True:
            pass
    if completion == "sleep":
        time.sleep(3600)
    if completion == "crash":
        raise RuntimeError("boom")
    if completion == "exit":
        raise SystemExit(3)
    if completion == "die":
        os._exit(7)
    return 1.0
