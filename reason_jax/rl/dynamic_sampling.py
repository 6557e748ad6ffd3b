"""DAPO dynamic sampling: keep only groups whose accuracy varies, refill from new generations.

Dimensions: B prompts (groups), G samples per prompt, N = B*G rollouts (rows of one group
adjacent).

A group whose samples are all right (or all wrong) has zero advantage everywhere and so no
policy gradient; it only shrinks the effective batch. `filter_groups` finds them (on the device
or the host); `GroupAccumulator` is the host-side loop helper that collects kept groups from
successive generation batches until the training batch is full. Groups are kept or dropped
whole, so advantages computed inside each kept group are unchanged by the filtering.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def filter_groups(metric_N, group_size: int):
    """Boolean keep mask [B]: True where the group's metric (accuracy) is not constant."""
    xp = np if isinstance(metric_N, (np.ndarray, list, tuple)) else jax.numpy
    metric_BG = xp.asarray(metric_N).reshape(-1, group_size)
    return xp.max(metric_BG, axis=1) != xp.min(metric_BG, axis=1)


class DynamicSamplingError(RuntimeError):
    """Too few informative groups after `max_gen_batches` generation batches."""


class GroupAccumulator:
    """Collects kept groups from generation batches until `target_groups` are available.

    Usage in the loop:
        acc = GroupAccumulator(target_groups=B, group_size=G, max_gen_batches=8)
        while not acc.full:
            rollouts = generate(...)          # dict of per-row arrays/lists, leading dim N
            acc.add(rollouts, accuracy_N)     # raises DynamicSamplingError when out of tries
        batch, stats = acc.take()

    `rollouts` is any pytree whose leaves have one row per rollout (numpy/jax arrays or Python
    lists), rows of a group adjacent. Surplus kept groups beyond `target_groups` are discarded
    (counted in `groups_surplus`).
    """

    def __init__(self, target_groups: int, group_size: int, max_gen_batches: int):
        if target_groups < 1 or group_size < 1 or max_gen_batches < 1:
            raise ValueError("target_groups, group_size and max_gen_batches must be >= 1")
        self.target_groups = target_groups
        self.group_size = group_size
        self.max_gen_batches = max_gen_batches
        self._parts: list[Any] = []
        self.groups_kept = 0
        self.groups_dropped = 0
        self.gen_batches = 0

    @property
    def full(self) -> bool:
        return self.groups_kept >= self.target_groups

    def add(self, rollouts, metric_N) -> bool:
        """Add one generation batch; returns `self.full`."""
        if self.full:
            return True
        keep_B = np.asarray(filter_groups(np.asarray(metric_N), self.group_size))
        rows_N = np.repeat(keep_B, self.group_size)
        self.gen_batches += 1
        self.groups_kept += int(keep_B.sum())
        self.groups_dropped += int((~keep_B).sum())
        if keep_B.any():
            kept = jax.tree.map(lambda x: _take_rows(x, rows_N), rollouts, is_leaf=_is_list)
            self._parts.append(kept)
        if not self.full and self.gen_batches >= self.max_gen_batches:
            raise DynamicSamplingError(
                f"dynamic sampling kept {self.groups_kept} of the {self.target_groups} groups "
                f"needed after {self.gen_batches} generation batches (max_gen_batches="
                f"{self.max_gen_batches}; {self.groups_dropped} groups had zero accuracy "
                "spread). Raise max_gen_batches, use more samples per prompt (group_size) or a "
                "dataset of a difficulty closer to the model's, or turn dynamic sampling off."
            )
        return self.full

    def take(self):
        """-> (rollouts with target_groups * group_size rows, stats dict); resets nothing."""
        if not self.full:
            raise DynamicSamplingError(
                f"only {self.groups_kept} of {self.target_groups} groups collected so far"
            )
        rows = self.target_groups * self.group_size
        merged = jax.tree.map(lambda *xs: _concat(xs)[:rows], *self._parts, is_leaf=_is_list)
        stats = {
            "dynamic_sampling/groups_dropped": self.groups_dropped,
            "dynamic_sampling/groups_surplus": self.groups_kept - self.target_groups,
            "dynamic_sampling/gen_batches": self.gen_batches,
        }
        return merged, stats


def _is_list(x):
    # Lists are per-row leaves here (e.g. completion strings), not pytree nodes.
    return isinstance(x, list)


def _take_rows(x, rows_N):
    if isinstance(x, list):
        return [v for v, keep in zip(x, rows_N) if keep]
    return np.asarray(x)[rows_N]


def _concat(xs):
    if isinstance(xs[0], list):
        return [v for x in xs for v in x]
    return np.concatenate(xs, axis=0)
