"""A checkpointable grain pipeline that yields batches of prompt records.

The pipeline is a ``grain.MapDataset`` chain over any random-access source (a list of dicts,
a :class:`~reason_jax.data.prompts.PromptDataset`, the endless
:class:`~reason_jax.data.countdown.CountdownSource`)::

    source -> shuffle(seed) -> repeat(num_epochs) -> [shard_index::shard_count] -> batch(B)

Global order. Shuffling and repetition act on the *global* stream, and each process then
takes every ``shard_count``-th element of it. Batch ``k`` of process ``i`` therefore holds
global positions ``k*B*P + j*P + i`` (``P = shard_count``, ``j < B``): together the processes
read global positions ``[k*B*P, (k+1)*B*P)`` in lockstep, disjointly, and the global data order
depends only on ``(seed, global batch B*P)``, not on how it is split over hosts.

Checkpointing. A MapDataset is random access, so the iterator's whole state is how many
batches it has produced. :meth:`PromptBatchIterator.get_state` stores that as the number of
*global* records consumed, plus what the order depends on; :meth:`set_state` accepts a state
from a run with a different process count as long as the global batch ``B*P`` is the same. The
state is a small JSON-serialisable dict, to be saved with the training checkpoint.

Records are Python objects (dicts), so batches are lists of dicts, not stacked arrays;
tokenising and padding happen later (:mod:`reason_jax.data.bucketing`).
"""

from __future__ import annotations

from typing import Any, Sequence

import grain

__all__ = ["PromptBatchIterator", "prompt_iterator", "STATE_VERSION"]

STATE_VERSION = 1


def _default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """One shard per JAX process unless told otherwise (jax is imported only when needed)."""
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    return int(shard_index), int(shard_count)


class PromptBatchIterator:
    """Iterator over batches (lists of ``batch_size`` record dicts) with resumable state.

    Finite when ``num_epochs`` is set (it then raises ``StopIteration``), endless otherwise.

    Args:
        source: anything with ``__len__`` and ``__getitem__(int)`` returning a record.
        batch_size: records per batch *per process*.
        seed: shuffle seed (each epoch is shuffled differently).
        shuffle: shuffle the source; use False for sources whose records are already random
            draws, such as the countdown train stream.
        num_epochs: passes over the source; None repeats forever.
        shard_index, shard_count: this process's slice; default ``jax.process_index()`` and
            ``jax.process_count()``.
        drop_remainder: drop a last partial batch (and, for finite runs, cut the stream to
            whole global batches so every process yields the same number of batches).
    """

    def __init__(
        self,
        source: Sequence[Any],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        shard_index: int | None = None,
        shard_count: int | None = None,
        drop_remainder: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be None (endless) or >= 1, got {num_epochs}")
        if len(source) == 0:
            raise ValueError("the prompt source is empty")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_epochs = num_epochs
        self.shard_index, self.shard_count = _default_shard(shard_index, shard_count)
        self.drop_remainder = bool(drop_remainder)
        self.source_len = len(source)
        self.global_batch_size = self.batch_size * self.shard_count

        ds = grain.MapDataset.source(source)
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed)
        ds = ds.repeat(num_epochs)  # None: endless, each epoch reshuffled
        if num_epochs is not None and self.drop_remainder:
            # Cut the global stream to whole global batches, so every process yields the same
            # number of batches (a process with one batch more would hang the others).
            usable = len(ds) - len(ds) % self.global_batch_size
            ds = ds[:usable]
        ds = ds[self.shard_index :: self.shard_count]
        # batch_fn=list keeps records as Python dicts instead of stacking them into arrays.
        self._batches = ds.batch(self.batch_size, drop_remainder=self.drop_remainder, batch_fn=list)
        self._next = 0

    @property
    def dataset(self) -> grain.MapDataset:
        """The underlying grain MapDataset of batches (random access by batch index)."""
        return self._batches

    @property
    def num_batches(self) -> int | None:
        """Batches per process, or None for an endless iterator."""
        return len(self._batches) if self.num_epochs is not None else None

    def __iter__(self) -> "PromptBatchIterator":
        return self

    def __next__(self) -> list[dict]:
        if self.num_epochs is not None and self._next >= len(self._batches):
            raise StopIteration
        batch = self._batches[self._next]
        self._next += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: global records consumed and what the order depends on."""
        return {
            "version": STATE_VERSION,
            "global_records_consumed": self._next * self.global_batch_size,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_epochs": self.num_epochs,
            "source_len": self.source_len,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`get_state`'s output (possibly from a run with another host count).

        Raises ValueError when the state belongs to a different data order (seed, shuffle,
        epochs, source length) or cannot be split into whole batches of this iterator.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown pipeline state version {state.get('version')!r}")
        mine = self.get_state()
        for key in ("seed", "shuffle", "num_epochs", "source_len"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"pipeline state does not match this iterator: {key}={state.get(key)!r} in "
                    f"the state, {mine[key]!r} here"
                )
        consumed = int(state["global_records_consumed"])
        if consumed % self.global_batch_size:
            raise ValueError(
                f"the state has consumed {consumed} records, not a multiple of this iterator's "
                f"global batch {self.global_batch_size} (batch_size * shard_count)"
            )
        self._next = consumed // self.global_batch_size

    def __repr__(self) -> str:
        return (
            f"PromptBatchIterator(batch_size={self.batch_size}, shard={self.shard_index}/"
            f"{self.shard_count}, seed={self.seed}, next_batch={self._next})"
        )


def prompt_iterator(source: Sequence[Any], **kwargs: Any) -> PromptBatchIterator:
    """Batches of prompt records from a random-access ``source`` (see
    :class:`PromptBatchIterator` for the arguments)."""
    return PromptBatchIterator(source, **kwargs)
