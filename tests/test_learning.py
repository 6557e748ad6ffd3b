"""RL visibly teaches the built-in task: a short SFT, then DAPO raises accuracy."""

import os
import statistics

import pytest

from reason_jax.config.loading import load_config
from reason_jax.run.loop import train
from reason_jax.observe.metrics import read_metrics


@pytest.mark.slow
def test_short_run_raises_accuracy(tmp_path):
    # A weak cold start (~0.25 accuracy) leaves room to improve; 60 DAPO steps of 16 x 8.
    cfg = load_config(None, [
        "data.countdown.numbers=3",  # the classic task: a cold start this short already succeeds
        "sft.steps=300", "sft.batch_size=64", "steps=60", "rollout.batch_size=16",
        "log.progress=False", "checkpoint.every=1000", "time_budget_s=0",
    ])
    train(cfg, str(tmp_path))
    acc = [r["accuracy"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl"))]
    first, last = statistics.mean(acc[:10]), statistics.mean(acc[-10:])
    # Each mean is over 1,280 samples (standard error ~0.013): +0.03 is a real rise.
    assert first > 0.1, f"the cold start should sometimes succeed, got {first:.3f}"
    assert last > first + 0.03, (first, last, acc)
