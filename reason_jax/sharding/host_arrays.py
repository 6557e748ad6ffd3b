"""Moving per-host data in and out of global arrays (single- and multi-host alike).

Each process holds the rows of its own prompts. `to_global` assembles those into one array
sharded over the data axes; `to_local` returns the rows this process owns, so verification
runs on every host for its own rollouts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from reason_jax.sharding.rules import partition_spec


def rows_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(("batch",) + (None,) * (ndim - 1), mesh=mesh))


def to_global(local, mesh: Mesh):
    """Pytree of per-process numpy arrays (leading dim = local rows) -> global jax arrays."""
    def put(x):
        x = np.asarray(x)
        sharding = rows_sharding(mesh, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)
    return jax.tree.map(put, local)


def to_local(tree):
    """Pytree of global arrays sharded over rows -> this process's rows as numpy."""
    def get(x):
        if jax.process_count() == 1 or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        seen, parts = set(), []
        for s in shards:
            start = s.index[0].start or 0
            if start not in seen:  # replicas of the same rows live on several devices
                seen.add(start)
                parts.append(np.asarray(s.data))
        return np.concatenate(parts, axis=0)
    return jax.tree.map(get, tree)
