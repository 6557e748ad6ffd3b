"""Loss aggregation over tokens and sequences, in exact "numerator / global normaliser" form.

Dimensions: N rollouts in the (micro-)batch, T response length.

Every mode is `loss = sum over the minibatch of per-sequence numerators / normaliser`, where the
numerator is additive over rows and the normaliser depends only on the *whole* minibatch's mask.
A minibatch split into gradient-accumulation micro-batches (or sharded over data-parallel
devices) therefore gives exactly the full-minibatch loss: sum the micro-batch numerators, divide
once by the global normaliser. Averaging per-micro-batch means instead (what Tunix does)
re-weights tokens by which micro-batch they landed in: [[1, 3], [2, 2, 2, 6]] gives 2.5, not the
token-mean 16/6.

Modes (per-token values l, mask m, len_i = sum_t m_it):
  token-mean              sum_it l m / sum_it m                        (DAPO; default)
  seq-mean-token-mean     sum_i (sum_t l m / len_i) / #non-empty seqs  (original GRPO)
  seq-mean-token-sum      sum_it l m / #non-empty seqs
  seq-mean-token-sum-norm sum_it l m / T                               (Dr. GRPO; verl's form)
Sequences with no valid token (e.g. masked out by the overlong filter) count in no normaliser,
so filtering does not dilute the loss; an all-masked minibatch gives 0, not NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_agg(agg: str) -> None:
    if agg not in AGG_MODES:
        raise ValueError(f"unknown aggregation {agg!r}; valid: {', '.join(AGG_MODES)}")


def agg_numerator(values_NT, mask_NT, agg: str):
    """Additive-over-rows part of the aggregated loss (sum over this (micro-)batch)."""
    check_agg(agg)
    mask_NT = mask_NT.astype(jnp.float32)
    # where, not *: a non-finite value at a padded position must not leak (inf * 0 = NaN).
    masked_NT = jnp.where(mask_NT > 0, values_NT * mask_NT, 0.0)
    if agg == "seq-mean-token-mean":
        len_N = jnp.sum(mask_NT, axis=1)
        return jnp.sum(jnp.sum(masked_NT, axis=1) / jnp.maximum(len_N, 1.0))
    return jnp.sum(masked_NT)


def agg_normaliser(mask_NT, agg: str):
    """Divisor for the summed numerators; pass the mask of the *whole* minibatch."""
    check_agg(agg)
    mask_NT = mask_NT.astype(jnp.float32)
    if agg == "token-mean":
        return jnp.maximum(jnp.sum(mask_NT), 1.0)
    if agg == "seq-mean-token-sum-norm":
        # A constant (the padded response length), as in verl and Dr. GRPO.
        return jnp.asarray(mask_NT.shape[1], jnp.float32)
    non_empty_N = jnp.sum(mask_NT, axis=1) > 0
    return jnp.maximum(jnp.sum(non_empty_N.astype(jnp.float32)), 1.0)


def aggregate(values_NT, mask_NT, agg: str = "token-mean"):
    """The aggregated loss of a whole minibatch in one go."""
    return agg_numerator(values_NT, mask_NT, agg) / agg_normaliser(mask_NT, agg)
