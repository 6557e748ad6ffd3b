"""Every test runs on CPU with 8 forced host devices, so sharded paths are exercised."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent compilation cache per test session, inherited by the CLI subprocesses: many
# tests build the same tiny programs (a train step, a sampler) in new jit objects or new
# processes, and compiling them again is most of the suite's time on 2 cores. A fresh
# directory each session, so nothing carries over between sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _CACHE_DIR = tempfile.mkdtemp(prefix="rj-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

    def pytest_sessionfinish(session, exitstatus):
        import shutil

        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# -- gs:// tests: a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py) ------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """One emulator process per session: gcsfs and tensorstore cache their client per process,
    so the endpoint (the port) must not change between modules; buckets isolate them."""
    from gcs_emulator import GcsEmulator, emulator_available

    if not emulator_available():
        pytest.skip("gcp-storage-emulator or gcsfs is not installed (pip install -e '.[test]')")
    emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs") / "emulator.log"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in emulator.env.items():
                mp.setenv(key, value)  # for gs:// paths used inside the test process
            yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def gcs_bucket(gcs_emulator):
    """A fresh bucket for one test module (`.name`, `.url(...)`, `.files(...)`, `.env`)."""
    from gcs_emulator import Bucket

    return Bucket(gcs_emulator, gcs_emulator.new_bucket())
