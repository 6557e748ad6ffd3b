"""Paths that may be local or in a bucket (`gs://...`), through `etils.epath` as Orbax uses.

On a pod the workdir is a bucket, so `os.path` and `open` are the wrong tools: every path the
user gives (workdir, `model.init_from`, `data.path`, import/export outputs) goes through
`as_path`. A `gs://` path needs `gcsfs` installed (docs/tpu_pods.md); object stores have no
rename and no append, so writes here are whole-object uploads, which GCS makes atomic.
"""

from __future__ import annotations

import os
import tempfile

from etils import epath


def is_remote(path) -> bool:
    """True for URL-style paths (gs://, s3://, ...), False for local files."""
    return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
    """`path` as an epath.Path; local paths are made absolute (a relative one would move with
    the working directory of a later process)."""
    if isinstance(path, epath.Path) or is_remote(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.fspath(path)))


def join(path, *parts: str) -> str:
    """String form of `path / parts...`, keeping a `gs://` prefix intact (os.path.join and
    abspath would turn it into a local directory named `gs:`)."""
    return os.fspath(as_path(path).joinpath(*parts))


def exists(path) -> bool:
    return as_path(path).exists()


def write_bytes_atomic(path, data: bytes) -> None:
    """Readers never see a half-written file: local files are written to a temporary name in
    the same directory and renamed; a bucket object is replaced in one upload."""
    p = as_path(path)
    if is_remote(p):
        p.write_bytes(data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=os.fspath(p.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.fspath(p))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_text(path) -> str:
    return as_path(path).read_text(encoding="utf-8")
