"""Prompt length buckets and left padding."""

import numpy as np
import pytest

from reason_jax.data.bucketing import (
    PromptTooLongError,
    bucket_length,
    left_pad,
    pad_prompts,
    power_of_two_buckets,
)


def test_bucket_length():
    assert bucket_length(5, [8, 16, 32]) == 8
    assert bucket_length(8, [32, 8, 16]) == 8
    assert bucket_length(9, [8, 16, 32]) == 16
    with pytest.raises(PromptTooLongError, match="33 exceeds the largest bucket 32"):
        bucket_length(33, [8, 16, 32])
    assert bucket_length(0) == 16 and bucket_length(17) == 32 and bucket_length(100, min_length=8) == 128
    assert bucket_length(80, max_length=96) == 96  # a non-power-of-two cap is a bucket too
    with pytest.raises(PromptTooLongError):
        bucket_length(100, max_length=64)
    assert power_of_two_buckets(100, 16) == [16, 32, 64, 128]


def test_left_pad_puts_last_token_at_end():
    tokens, lengths = left_pad([[5, 6, 7], [8], []], 4, pad_id=0)
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    with pytest.raises(PromptTooLongError, match="prompt 0 has 3 tokens"):
        left_pad([[1, 2, 3]], 2, pad_id=0)
    tokens, lengths = left_pad([[1, 2, 3], [4]], 2, pad_id=9, truncate=True)
    np.testing.assert_array_equal(tokens, [[2, 3], [9, 4]])
    np.testing.assert_array_equal(lengths, [2, 1])


def test_pad_prompts_uses_bucket_of_longest():
    tokens, lengths = pad_prompts([[1] * 10, [2] * 3], pad_id=0, buckets=[4, 16, 64])
    assert tokens.shape == (2, 16)
    np.testing.assert_array_equal(lengths, [10, 3])
    assert (tokens[:, -1] != 0).all()
    with pytest.raises(PromptTooLongError):
        pad_prompts([[1] * 70], pad_id=0, buckets=[4, 16, 64])
    tokens, lengths = pad_prompts([list(range(70))], pad_id=0, buckets=[4, 16, 64], truncate=True)
    assert tokens.shape == (1, 64) and tokens[0, -1] == 69 and lengths[0] == 64
