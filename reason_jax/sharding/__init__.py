"""Mesh construction, logical-axis rules, multi-host initialisation."""

from reason_jax.sharding.mesh import AXES, data_size, make_mesh, resolve_sizes
from reason_jax.sharding.rules import (ROLLOUT_RULES, TRAIN_RULES, batch_sharding,
                                       named_sharding, partition_spec, state_shardings)

__all__ = ["AXES", "ROLLOUT_RULES", "TRAIN_RULES", "batch_sharding", "data_size", "make_mesh",
           "named_sharding", "partition_spec", "resolve_sizes", "state_shardings"]
