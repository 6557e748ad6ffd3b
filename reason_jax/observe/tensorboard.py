"""TensorBoard scalars through tensorboardX (pure Python; protobuf comes with Orbax).

Two things are ours: `restart` (a resumed run tells TensorBoard to drop the points after its
checkpoint, tensorboardX's `purge_step`), and bucket paths. tensorboardX writes `gs://` logdirs
through google-cloud-storage; we register a writer that goes through etils.epath instead, so a
bucket workdir needs one GCS client (gcsfs, as Orbax and the rest of the run use) and honours
the same emulator and credentials settings. GCS objects cannot be appended to, so that writer
uploads the whole event file on each flush (the loop flushes at checkpoints and every
`remote_flush_s`), as tensorboardX's own GCS writer does.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

from tensorboardX import SummaryWriter
from tensorboardX import record_writer

from reason_jax import paths


class _BucketEventFile:
    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        paths.as_path(self.path).write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _BucketEventFiles:
    def open(self, path):
        return _BucketEventFile(path)

    def directory_check(self, path):
        pass  # buckets have no directories to create


record_writer.register_writer_factory("gs", _BucketEventFiles())

# tensorboardX names an event file by the second and the host only, and opens it for writing:
# a second writer in the same second (a resume right after the previous process, or `restart`)
# would replace the first one's file and its points. TensorBoard reads a run's files in name
# order, so the suffix keeps creation order too: nanoseconds (fixed width), then the process
# and a zero-padded counter for writers opened in the same nanosecond.
_WRITER_IDS = itertools.count()


def _writer(logdir: str, **kw) -> SummaryWriter:
    suffix = f".{time.time_ns():020d}.{os.getpid()}.{next(_WRITER_IDS):06d}"
    return SummaryWriter(logdir, filename_suffix=suffix, **kw)


class TensorBoard:
    """Scalar summaries under `logdir` (local or gs://)."""

    def __init__(self, logdir: str):
        self.logdir = os.fspath(logdir)
        self._writer = _writer(self.logdir)

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def restart(self, step: int) -> None:
        """A resumed run recomputes steps >= `step`: TensorBoard drops its old points there."""
        self._writer.close()
        self._writer = _writer(self.logdir, purge_step=int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
