"""Prompt length bucketing and left padding.

The sampler is jitted per prompt length S, so prompt batches are padded to one of a few bucket
lengths instead of their exact maximum (one compilation per bucket, not per batch). Prompts are
*left*-padded: every row's last prompt token sits at index ``S-1``, so decoding starts at the
same position for every row and the KV cache needs no per-row offset for the first new token.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["PromptTooLongError", "power_of_two_buckets", "bucket_length", "left_pad", "pad_prompts"]


class PromptTooLongError(ValueError):
    """A prompt is longer than the largest bucket (and truncation was not asked for)."""


def power_of_two_buckets(max_length: int, min_length: int = 16) -> list[int]:
    """``[min_length, 2*min_length, ...]`` up to the first power-of-two multiple >= max_length."""
    if min_length < 1 or max_length < 1:
        raise ValueError(f"lengths must be >= 1, got min={min_length}, max={max_length}")
    buckets = [min_length]
    while buckets[-1] < max_length:
        buckets.append(buckets[-1] * 2)
    return buckets


def bucket_length(
    n: int, buckets: Sequence[int] | None = None, *, min_length: int = 16, max_length: int | None = None
) -> int:
    """The smallest bucket >= ``n``.

    Args:
        n: a (maximum) prompt length.
        buckets: allowed lengths, any order. None means powers of two times ``min_length``
            (16, 32, 64, ...), capped at ``max_length`` when given.
        min_length: smallest power-of-two bucket.
        max_length: largest allowed length in power-of-two mode (None: unbounded).

    Raises:
        PromptTooLongError: when ``n`` exceeds the largest bucket.
    """
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    if buckets is None:
        if max_length is not None and n > max_length:
            raise PromptTooLongError(f"prompt length {n} exceeds the maximum {max_length}")
        length = min_length
        while length < n:
            length *= 2
        # A non-power-of-two cap is still a valid bucket: cap the last doubling at it.
        return length if max_length is None else min(length, max_length)
    if not buckets:
        raise ValueError("buckets is empty")
    fitting = [b for b in buckets if b >= n]
    if not fitting:
        raise PromptTooLongError(f"prompt length {n} exceeds the largest bucket {max(buckets)}")
    return min(fitting)


def left_pad(
    token_lists: Sequence[Sequence[int]], length: int, pad_id: int, *, truncate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into one array.

    Args:
        token_lists: B prompts as token ids.
        length: S, the padded length.
        pad_id: fill value.
        truncate: keep the *last* ``length`` tokens of longer prompts (the end of a prompt is
            what the model continues from) instead of raising.

    Returns:
        ``(tokens_BS, lengths_B)``: int32 tokens with row ``b``'s prompt in
        ``tokens_BS[b, S - lengths_B[b]:]`` and int32 lengths (after truncation).

    Raises:
        PromptTooLongError: a prompt is longer than ``length`` and ``truncate`` is False.
    """
    tokens_BS = np.full((len(token_lists), length), pad_id, dtype=np.int32)
    lengths_B = np.zeros((len(token_lists),), dtype=np.int32)
    for b, tokens in enumerate(token_lists):
        n = len(tokens)
        if n > length:
            if not truncate:
                raise PromptTooLongError(
                    f"prompt {b} has {n} tokens, more than the padded length {length} "
                    "(use truncate=True to keep its last tokens)"
                )
            tokens, n = tokens[n - length :], length
        if n:
            tokens_BS[b, length - n :] = np.asarray(tokens, dtype=np.int32)
        lengths_B[b] = n
    return tokens_BS, lengths_B


def pad_prompts(
    token_lists: Sequence[Sequence[int]],
    pad_id: int,
    buckets: Sequence[int] | None = None,
    *,
    min_length: int = 16,
    max_length: int | None = None,
    truncate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad a batch to the bucket of its longest prompt: :func:`bucket_length` + :func:`left_pad`.

    With ``truncate=True`` prompts longer than the largest bucket (or ``max_length``) keep their
    last tokens; otherwise they raise :class:`PromptTooLongError`.
    """
    longest = max((len(t) for t in token_lists), default=0)
    if truncate:
        largest = max(buckets) if buckets is not None else max_length
        if largest is not None:
            longest = min(longest, largest)
    length = bucket_length(longest, buckets, min_length=min_length, max_length=max_length)
    return left_pad(token_lists, length, pad_id, truncate=truncate)
