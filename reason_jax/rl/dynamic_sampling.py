"""DAPO dynamic sampling: keep only groups whose metric varies, refill from new generations.

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
    """Boolean keep mask [B]: True where the group's metric (accuracy, or the reward for graded
    verifiers) is not constant."""
    xp = np if isinstance(metric_N, (np.ndarray, list, tuple)) else jax.numpy
    metric_BG = xp.asarray(metric_N).reshape(-1, group_size)
    return xp.max(metric_BG, axis=1) != xp.min(metric_BG, axis=1)


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling found no informative group for too many steps in a row."""


class GroupAccumulator:
    """Collects kept groups from generation batches until `target_groups` are available.

    Usage in the loop:
        acc = GroupAccumulator(target_groups=B, group_size=G, max_gen_batches=8)
        while not (acc.full or acc.exhausted):
            rollouts = generate(...)          # dict of per-row arrays/lists, leading dim N
            acc.add(rollouts, metric_N)
        batch, stats = acc.take()             # partial when exhausted (see `take`)

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
        self._filler: Any = None  # dropped groups of the latest batch: shape-keeping padding
        self.groups_kept = 0
        self.groups_dropped = 0
        self.gen_batches = 0

    @property
    def full(self) -> bool:
        return self.groups_kept >= self.target_groups

    @property
    def exhausted(self) -> bool:
        """No more generation batches allowed, and still not full."""
        return not self.full and self.gen_batches >= self.max_gen_batches

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
            self._parts.append(_rows(rollouts, rows_N))
        if (~keep_B).any():
            self._filler = _rows(rollouts, ~rows_N)
        return self.full

    def take(self):
        """-> (rollouts with target_groups * group_size rows, loss_rows_N, stats).

        Full: the first target_groups kept groups, and loss_rows_N all True. Exhausted: the
        kept groups (possibly none) padded to the same static shape with dropped groups, whose
        rows are False in loss_rows_N: the train step masks them out of the loss and of its
        normaliser, so the update is exactly the one over the informative groups.
        """
        rows = self.target_groups * self.group_size
        parts = list(self._parts)
        kept_rows = min(self.groups_kept, self.target_groups) * self.group_size
        if kept_rows < rows:
            if self._filler is None:
                raise ValueError("no generation batch was added")
            need_groups = self.target_groups - self.groups_kept
            # The latest batch's dropped groups, repeated if there are fewer than needed.
            filler_groups = len(_first_leaf(self._filler)) // self.group_size
            reps = -(-need_groups // filler_groups)
            parts += [self._filler] * reps
        merged = jax.tree.map(lambda *xs: _concat(xs)[:rows], *parts, is_leaf=_is_list)
        loss_rows_N = np.arange(rows) < kept_rows
        stats = {
            "dynamic_sampling/groups_dropped": self.groups_dropped,
            "dynamic_sampling/groups_surplus": max(self.groups_kept - self.target_groups, 0),
            "dynamic_sampling/groups_missing": max(self.target_groups - self.groups_kept, 0),
            "dynamic_sampling/gen_batches": self.gen_batches,
        }
        return merged, loss_rows_N, stats


def _rows(rollouts, rows_N):
    return jax.tree.map(lambda x: _take_rows(x, rows_N), rollouts, is_leaf=_is_list)


def _first_leaf(tree):
    return jax.tree.leaves(tree, is_leaf=_is_list)[0]


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
