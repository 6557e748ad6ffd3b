"""Paths that may be local or in a bucket (`gs://...`), through `etils.epath` as Orbax uses.

On a pod the workdir is a bucket, so `os.path` and `open` are the wrong tools: every path the
user gives (workdir, `model.init_from`, `data.path`, `data.tokenizer`, import/export outputs)
goes through `as_path`. A `gs://` path needs `gcsfs` installed (docs/tpu_pods.md); object
stores have no rename and no append, so writes here are whole-object uploads, which GCS makes
atomic: an object appears, or is replaced, only when its upload completes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from etils import epath

# Copy size for uploads of staged files: big enough that gcsfs sends few requests.
_UPLOAD_CHUNK = 16 << 20


def is_remote(path) -> bool:
    """True for URL-style paths (gs://, s3://, ...), False for local files."""
    return "://" in os.fspath(path)


def _epath(path) -> epath.Path:
    if isinstance(path, epath.Path) or is_remote(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.fspath(path)))


def as_path(path) -> epath.Path:
    """`path` as an epath.Path, for reading or writing; local paths are made absolute (a
    relative one would move with the working directory of a later process)."""
    p = _epath(path)
    if os.fspath(p).startswith("gs://"):
        _require_gcsfs()
    return p


@functools.cache
def _require_gcsfs() -> None:
    # epath would fail only at the first read or write, deep inside fsspec; say what to
    # install up front instead.
    if importlib.util.find_spec("gcsfs") is None:
        raise ImportError("gs:// paths need gcsfs: pip install 'reason-jax[gcs]' "
                          "(docs/tpu_pods.md)")


def join(path, *parts: str) -> str:
    """String form of `path / parts...`, keeping a `gs://` prefix intact (os.path.join and
    abspath would turn it into a local directory named `gs:`). Text only: no client needed."""
    return os.fspath(_epath(path).joinpath(*parts))


def exists(path) -> bool:
    return as_path(path).exists()


class LocalPathRequired(ValueError):
    """A bucket path was given where only a local one works (a user error, not a bug)."""


def require_local(path, why: str) -> str:
    """`path` as a local absolute path, or `LocalPathRequired` saying why a bucket path
    cannot be used here and how to get a local copy."""
    if is_remote(path):
        raise LocalPathRequired(
            f"{path}: {why}, so this must be a local path; copy it first, e.g. "
            f"`gcloud storage cp -r {os.fspath(path).rstrip('/')} /tmp/`")
    return os.path.abspath(os.fspath(path))


@contextlib.contextmanager
def atomic_writer(path) -> Iterator[BinaryIO]:
    """A binary file whose content appears at `path` only if the block finishes.

    Local: a temporary file in the same directory, renamed over `path`. Bucket: a local
    temporary file, uploaded when the block ends, so a failure while producing the bytes
    uploads nothing, and the object is created by one upload (never half-visible). Use it for
    large files produced piece by piece (safetensors shards); small whole blobs go through
    `write_bytes_atomic`.
    """
    p = as_path(path)
    if is_remote(p):
        with tempfile.TemporaryFile() as staged:
            yield staged
            staged.seek(0)
            with p.open("wb") as out:
                shutil.copyfileobj(staged, out, _UPLOAD_CHUNK)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=os.fspath(p.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, os.fspath(p))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    """Readers never see a half-written file: local files are written to a temporary name in
    the same directory and renamed; a bucket object is replaced in one upload."""
    p = as_path(path)
    if is_remote(p):
        p.write_bytes(data)  # the bytes are complete already: nothing to stage
        return
    with atomic_writer(p) as f:
        f.write(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_text(path) -> str:
    return as_path(path).read_text(encoding="utf-8")


def read_bytes(path) -> bytes:
    return as_path(path).read_bytes()
