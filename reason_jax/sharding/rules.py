"""Logical axis names -> mesh axes: the whole sharding policy on one screen.

Parameters carry logical names (see `reason_jax.models.transformer`); these tables decide
where each name lives on the mesh `('dcn_data', 'data', 'fsdp', 'tensor')`.

Training shards weights over `fsdp` (ZeRO-3 style) and heads/MLP over `tensor`.
Rollout keeps weights whole across the data axes (decode reads every weight every step, so
gathering them per step would cost more than the memory saved) and splits heads over `tensor`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("dcn_data", "data", "fsdp")

TRAIN_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "length": None,
}

ROLLOUT_RULES: dict[str, Any] = {**TRAIN_RULES, "embed": None}


def _axis_size(mesh: Mesh, axes) -> int:
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = 1
    for n in names:
        size *= mesh.shape.get(n, 1)
    return size


def partition_spec(logical: Sequence[str | None] | None, rules: dict[str, Any] | None = None,
                   mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for one array. With `mesh` and `shape`, a dimension that the mesh axes
    do not divide (e.g. 2 KV heads over tensor=4) is replicated instead of failing."""
    if logical is None:
        return PartitionSpec()
    rules = TRAIN_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        axes = rules.get(name) if name is not None else None
        if axes is not None:
            names = (axes,) if isinstance(axes, str) else tuple(axes)
            if mesh is not None:
                names = tuple(n for n in names if n in mesh.shape and mesh.shape[n] > 1)
            names = tuple(n for n in names if n not in used)  # a mesh axis shards one dim
            if shape is not None and mesh is not None and names:
                if shape[i] % _axis_size(mesh, names):
                    names = ()
            used.update(names)
            axes = None if not names else names[0] if len(names) == 1 else names
        out.append(axes)
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, logical, rules=None, shape=None) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(logical, rules, mesh, shape))


def state_shardings(mesh: Mesh, abstract_state, axes_tree, rules=None):
    """Shardings for a pytree of arrays/ShapeDtypeStructs given its logical-axes pytree."""
    return jax.tree.map(
        lambda leaf, ax: named_sharding(mesh, ax, rules, getattr(leaf, "shape", None)),
        abstract_state, axes_tree,
        is_leaf=lambda x: x is None or isinstance(x, tuple) and all(
            isinstance(a, (str, type(None))) for a in x))


def batch_sharding(mesh: Mesh, ndim: int, rules=None) -> NamedSharding:
    """Leading dimension over the data axes, the rest replicated."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)
