"""Per-position entropy of the categorical distribution given by logits.

Dimensions: any leading dims (e.g. N rollouts, T response length), V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def entropy_from_logits(logits_V):
    """H = logsumexp(z) - sum softmax(z) z over the last axis, in float32.

    This form never takes log of a probability, so it stays finite when softmax underflows
    to 0 for some entries (where -sum p log p would hit 0 * -inf).
    """
    z = logits_V.astype(jnp.float32)
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
