"""`bench train-step --lengths`: the padding the train step processes, before and after
length-aware micro-batches, counted by hand on a small case."""

import numpy as np

from reason_jax import rl
from reason_jax.bench.train_step import padding_fractions, synthetic_batch
from reason_jax.config.loading import load_config


def test_padding_fractions_by_hand():
    S, T = 2, 8
    lengths = np.array([1, 8, 2, 7, 1, 2, 8, 3])  # real response tokens per row
    cfg = load_config(None, ["rl.micro_batches=2", "rl.length_buckets=2"])
    batch = synthetic_batch(cfg, 8, S, T, vocab=16, lengths_N=lengths)
    real = 8 * S + lengths.sum()  # 48
    assert batch["valid_NX"].sum() == real
    # Sorted into micro-batches of the 4 shortest (<= 2 tokens: bucket 4) and 4 longest (8).
    pad = padding_fractions(batch, rl.StepConfig(micro_batches=2, length_buckets=2), S, T)
    assert np.isclose(pad["before"], 1 - real / (8 * (S + T)))
    assert np.isclose(pad["after"], 1 - real / (4 * (S + 4) + 4 * (S + 8)))
    # Without length buckets nothing is trimmed.
    flat = synthetic_batch(load_config(None, ["rl.micro_batches=2"]), 8, S, T, 16,
                           lengths_N=lengths)
    pad = padding_fractions(flat, rl.StepConfig(micro_batches=2), S, T)
    assert pad["before"] == pad["after"]
