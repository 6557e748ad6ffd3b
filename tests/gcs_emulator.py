"""A real Google Cloud Storage JSON API on 127.0.0.1 for the gs:// tests.

`gcp-storage-emulator` (in-memory) runs in a subprocess; the code under test reaches it through
environment variables only, exactly as it would reach GCS on a pod:

  * gcsfs (etils.epath, hence our paths, metrics, TensorBoard, tokenizers; Orbax's metadata):
    `STORAGE_EMULATOR_HOST`; `FSSPEC_GCS_TOKEN=anon` skips the credential probing (there are no
    credentials), `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` skips the bucket-type lookup
    through the Storage Control API, which the emulator does not have.
  * tensorstore (Orbax's array data): `TENSORSTORE_GCS_HTTP_URL`, and
    `GOOGLE_AUTH_TOKEN_FOR_TESTING` as the bearer token, so it asks no metadata server.

Bucket names follow GCS rules (tensorstore checks them: at least 3 characters).

One gap of the emulator is filled here (run this file as a script to start it): real GCS sends
an object's generation in the `x-goog-generation` header of every media download, and
tensorstore keeps it to revalidate its cached OCDBT manifest (`ifGenerationNotMatch`); the
emulator leaves the header out, which makes the next conditional read fail ("Malformed
StorageGeneration") once a checkpoint has more than a handful of arrays.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing

EMULATOR_MODULE = "gcp_storage_emulator"


def emulator_available() -> bool:
    # find_spec, not import: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when imported, so it
    # must not be imported before the environment is set.
    return all(importlib.util.find_spec(m) is not None for m in (EMULATOR_MODULE, "gcsfs"))


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """One emulator process; `env` is what a client process needs to use it."""

    def __init__(self, log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        }
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout_s=30)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the GCS emulator exited with {self.process.returncode}; "
                                   f"see {self._log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the GCS emulator did not listen on {self.url} in {timeout_s}s")

    def fs(self):
        """A fresh gcsfs client: no listing cache, so it sees what other processes wrote."""
        from gcsfs.core import GCSFileSystem  # the plain client, whatever the env says

        return GCSFileSystem(token="anon", endpoint_url=self.url, skip_instance_cache=True)

    def new_bucket(self, prefix: str = "rj") -> str:
        """Create a bucket with a unique name and return it."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Bucket:
    """One bucket of the emulator, with the checks tests make on it."""

    def __init__(self, emulator: GcsEmulator, name: str):
        self.emulator = emulator
        self.name = name
        self.env = emulator.env

    def url(self, *parts: str) -> str:
        return "/".join([f"gs://{self.name}", *parts])

    def files(self, prefix: str = "") -> list[str]:
        """Object names (relative to the bucket) under `prefix`."""
        root = f"{self.name}/{prefix}".rstrip("/")
        fs = self.emulator.fs()
        if not fs.exists(root):
            return []
        return sorted(p[len(self.name) + 1:] for p in fs.find(root))

    def read_bytes(self, name: str) -> bytes:
        return self.emulator.fs().cat_file(f"{self.name}/{name}")

    def write_bytes(self, name: str, data: bytes) -> None:
        self.emulator.fs().pipe_file(f"{self.name}/{name}", data)

    def download(self, prefix: str, local_dir: str) -> str:
        """Copy every object under `prefix` into `local_dir` (same relative layout)."""
        fs = self.emulator.fs()
        for name in self.files(prefix):
            rel = name[len(prefix):].lstrip("/")
            dest = os.path.join(local_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fs.get_file(f"{self.name}/{name}", dest)
        return local_dir


def local_gs_dirs(root: str) -> list[str]:
    """Folders named like `gs:` under `root`: what os.path code makes of a gs:// path."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith("gs:")]
    return found


def _add_generation_headers() -> None:
    """Media downloads answer with `x-goog-generation` / `x-goog-metageneration`, as GCS does."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    plain = objects.download

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
        except NotFound:
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

    objects.download = download  # objects.get (?alt=media) calls it through the module
    server.HANDLERS = tuple(
        (regex, {method: download if handler is plain else handler
                 for method, handler in handlers.items()})
        for regex, handlers in server.HANDLERS)


def _serve(port: int) -> None:
    from gcp_storage_emulator.server import create_server

    _add_generation_headers()
    create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
