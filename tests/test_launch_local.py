"""launch/local.py: N real JAX processes on CPU that see one 8-device system."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import load_launch_script

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "launch" / "local.py"


local = load_launch_script("local")


def _launch(tmp_path, *args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(LOCAL), "--log-dir", str(tmp_path / "logs"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


CROSS_PROCESS_SUM = textwrap.dedent("""
    import numpy as np
    from reason_jax.sharding import distributed
    assert distributed.initialize()
    assert distributed.initialize()  # idempotent
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    assert jax.process_count() == 2, jax.process_count()
    assert jax.device_count() == 8, jax.device_count()
    assert jax.local_device_count() == 4, jax.local_device_count()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    pid = jax.process_index()
    local = np.arange(4, dtype=np.float32) + 4 * pid       # process 0: 0..3, process 1: 4..7
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, (8,))
    total = jax.jit(lambda a: (a * a).sum(), out_shardings=NamedSharding(mesh, P()))(x)
    gathered = multihost_utils.process_allgather(np.array([pid * 10]))
    print(f"RESULT pid={pid} main={distributed.is_main_process()} "
          f"sum={float(total):g} gathered={gathered.ravel().tolist()}")
""")


def test_two_processes_form_one_eight_device_system(tmp_path):
    t0 = time.monotonic()
    out = _launch(tmp_path, "--num-processes", "2", "--devices-per-process", "4", "--",
                  "python", "-c", CROSS_PROCESS_SUM)
    assert out.returncode == 0, out.stdout + out.stderr
    # sum of squares 0..7 = 140, computed across both processes' devices.
    assert "[p0] RESULT pid=0 main=True sum=140 gathered=[0, 10]" in out.stdout, out.stdout
    assert "[p1] RESULT pid=1 main=False sum=140 gathered=[0, 10]" in out.stdout, out.stdout
    for i in range(2):
        log = (tmp_path / "logs" / f"process_{i}.log").read_text()
        assert f"RESULT pid={i}" in log and "[p" not in log
    assert time.monotonic() - t0 < 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_failing_process_stops_the_others(tmp_path):
    # Process 1 fails at once; process 0 (and a grandchild it started) would sleep for minutes.
    script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        pid = int(os.environ["REASON_JAX_PROCESS_ID"])
        assert os.environ["REASON_JAX_NUM_PROCESSES"] == "2"
        assert os.environ["REASON_JAX_COORDINATOR"].startswith("127.0.0.1:")
        assert "--xla_force_host_platform_device_count=3" in os.environ["XLA_FLAGS"]
        assert "device_count=8" not in os.environ["XLA_FLAGS"]
        if pid == 1:
            time.sleep(1.0)
            print("failing now", flush=True)
            sys.exit(3)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        with open({str(tmp_path / 'pids')!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(300)
    """)
    t0 = time.monotonic()
    out = _launch(tmp_path, "--num-processes", "2", "--devices-per-process", "3", "--",
                  "python", "-c", script)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "[p1] failing now" in out.stdout
    assert "process 1 exited with 3" in out.stderr
    assert time.monotonic() - t0 < 30
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "launcher left processes behind"


def test_timeout_kills_everything(tmp_path):
    out = _launch(tmp_path, "--num-processes", "2", "--timeout", "1", "--",
                  "python", "-c", "import time; time.sleep(300)")
    assert out.returncode == 124
    assert "timeout" in out.stderr


def test_missing_command_is_an_error(tmp_path):
    out = _launch(tmp_path, "--num-processes", "2")
    assert out.returncode == 2
    assert "missing the command" in out.stderr


@pytest.mark.parametrize("flags, expected", [
    ("", "--xla_force_host_platform_device_count=4"),
    ("--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=4"),
    ("--foo=1 --xla_force_host_platform_device_count=8 --bar",
     "--foo=1 --bar --xla_force_host_platform_device_count=4"),
])
def test_device_count_flag_is_replaced(flags, expected):
    assert local.with_device_count(flags, 4) == expected


def test_sigint_is_forwarded_to_every_process(tmp_path):
    import signal
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = textwrap.dedent(f"""
        import os, time
        with open({str(tmp_path)!r} + f"/pid{{os.environ['REASON_JAX_PROCESS_ID']}}", "w") as f:
            f.write(str(os.getpid()))
        print("ready", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen(
        [sys.executable, str(LOCAL), "--num-processes", "2", "--log-dir", str(tmp_path / "logs"),
         "--", "python", "-c", script],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = set()
        while len(ready) < 2:
            line = proc.stdout.readline()
            assert line, "launcher ended early"
            if line.strip().endswith("ready"):
                ready.add(line.split()[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in range(2)]
    assert not any(_alive(p) for p in pids)


# ----------------------------------------------------------------------------- initialize() paths

@pytest.fixture
def clean_env(monkeypatch):
    from reason_jax.sharding import distributed
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID, distributed.ENV_DISTRIBUTED,
                 *distributed._TPU_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_initialized", False)
    return distributed


def test_initialize_is_a_no_op_for_a_single_process(clean_env, monkeypatch):
    monkeypatch.setattr(clean_env, "on_cloud_tpu", lambda: False)
    assert clean_env.initialize() is False
    assert clean_env.is_main_process()


def test_initialize_can_be_turned_off_on_tpu(clean_env, monkeypatch):
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-32")
    assert clean_env.on_cloud_tpu()
    monkeypatch.setenv(clean_env.ENV_DISTRIBUTED, "0")
    assert clean_env.initialize() is False


def test_initialize_needs_the_whole_coordinator_triple(clean_env, monkeypatch):
    monkeypatch.setenv(clean_env.ENV_COORDINATOR, "127.0.0.1:1234")
    with pytest.raises(ValueError, match="without num_processes/process_id"):
        clean_env.initialize()
    monkeypatch.setenv(clean_env.ENV_NUM_PROCESSES, "two")
    monkeypatch.setenv(clean_env.ENV_PROCESS_ID, "0")
    with pytest.raises(ValueError, match="REASON_JAX_NUM_PROCESSES must be an integer"):
        clean_env.initialize()
