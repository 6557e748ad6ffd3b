"""Host-side agreement between JAX processes: gathered statistics, shared decisions, and
each host's block of the global prompt stream. With one process every function is the
identity, so single-host code pays nothing."""

from __future__ import annotations

import jax
import numpy as np


def gather(x: np.ndarray) -> np.ndarray:
    """Concatenate `x` (leading axis) over processes, in process order; same on every host."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def all_hosts(flag: bool) -> bool:
    """True when `flag` holds on every host: decisions that change how many collective calls
    follow (another generation batch, a skipped step) must be taken by all hosts alike."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


class HostSlice:
    """This host's contiguous block of every global prompt batch.

    Every host walks the same global stream (prompts are cheap to read) and keeps rows
    [i*B/P, (i+1)*B/P): the global batch, laid out over hosts in process order, is then
    exactly the batch a single-process run sees, so results do not depend on the host count.
    """

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        n = len(batch) // jax.process_count()
        i = jax.process_index()
        return batch[i * n:(i + 1) * n]

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)
