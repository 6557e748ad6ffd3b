"""Run one command as N JAX processes on this machine (CPU devices), like a small pod.

    python launch/local.py --num-processes 2 --devices-per-process 4 -- \
        reason-jax train --workdir /tmp/run

Each process gets `REASON_JAX_COORDINATOR` (127.0.0.1:<free port>), `REASON_JAX_NUM_PROCESSES`,
`REASON_JAX_PROCESS_ID`, `JAX_PLATFORMS=cpu` and
`XLA_FLAGS=--xla_force_host_platform_device_count=K`; the program calls
`reason_jax.sharding.distributed.initialize()` once, which reads them. Output is streamed with a
`[p{i}]` prefix and written to `{log_dir}/process_{i}.log`. The launcher exits with the first
failing process's code (and stops the others), 124 on `--timeout`; SIGINT/SIGTERM are forwarded to
every process group, and a second one kills them.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, count: int) -> str:
    """`xla_flags` with any host device-count flag replaced by `count`."""
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])


def process_env(base: dict[str, str], *, process_id: int, num_processes: int,
                coordinator: str, devices_per_process: int) -> dict[str, str]:
    env = dict(base)
    env.update({
        "REASON_JAX_COORDINATOR": coordinator,
        "REASON_JAX_NUM_PROCESSES": str(num_processes),
        "REASON_JAX_PROCESS_ID": str(process_id),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": with_device_count(base.get("XLA_FLAGS", ""), devices_per_process),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("JAX_NUM_CPU_DEVICES", None)  # would override the XLA flag
    # `python` and `reason-jax` resolve to this interpreter's environment first.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, base.get("PATH", "")])
    return env


class Launcher:
    """Starts the processes, pumps their output, and tears everything down on failure."""

    def __init__(self, command: list[str], *, num_processes: int, devices_per_process: int,
                 port: int, log_dir: Path, timeout: float | None, grace_s: float = 5.0):
        self.command = command
        self.num_processes = num_processes
        self.devices_per_process = devices_per_process
        self.coordinator = f"127.0.0.1:{port}"
        self.log_dir = log_dir
        self.timeout = timeout
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []
        self.pumps: list[threading.Thread] = []
        self.print_lock = threading.Lock()
        self.signals_received = 0

    def _pump(self, i: int, proc: subprocess.Popen, log_path: Path) -> None:
        with open(log_path, "w", encoding="utf-8", errors="replace") as log:
            for line in iter(proc.stdout.readline, ""):
                log.write(line)
                log.flush()
                with self.print_lock:
                    sys.stdout.write(f"[p{i}] {line.rstrip(chr(10))}\n")
                    sys.stdout.flush()
        proc.stdout.close()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.num_processes):
            env = process_env(dict(os.environ), process_id=i, num_processes=self.num_processes,
                              coordinator=self.coordinator,
                              devices_per_process=self.devices_per_process)
            proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, bufsize=1, start_new_session=True)
            self.procs.append(proc)
            pump = threading.Thread(target=self._pump, daemon=True,
                                    args=(i, proc, self.log_dir / f"process_{i}.log"))
            pump.start()
            self.pumps.append(pump)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)  # the process and everything it started
                except ProcessLookupError:
                    pass

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace period."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        # Grandchildren that ignored SIGTERM: their group is gone with SIGKILL above.
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def on_signal(self, signum, _frame) -> None:
        self.signals_received += 1
        self._signal_all(signum if self.signals_received == 1 else signal.SIGKILL)

    def wait(self) -> int:
        start = time.monotonic()
        code = 0
        while True:
            codes = [p.poll() for p in self.procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, c = failed[0]
                code = c if c > 0 else 128 - c  # killed by signal N -> 128 + N
                if any(c is None for c in codes):
                    self._log(f"process {i} exited with {c}; stopping the others")
                break
            if all(c == 0 for c in codes):
                break
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                self._log(f"timeout after {self.timeout:g}s; stopping all processes")
                code = 124
                break
            time.sleep(0.05)
        self.stop_all()
        for pump in self.pumps:
            pump.join(timeout=5)
        return code

    def _log(self, msg: str) -> None:
        with self.print_lock:
            print(f"[launch] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run a command as N local JAX processes (CPU).",
        usage="%(prog)s --num-processes N [options] -- COMMAND ...")
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=1,
                        help="forced CPU devices per process (default 1)")
    parser.add_argument("--port", type=int, default=None,
                        help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--log-dir", type=Path, default=Path("logs"),
                        help="one process_{i}.log per process (default ./logs)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop everything after this many seconds (exit 124)")
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1:]
    else:
        own, command = argv, []
    args = parser.parse_args(own)
    if not command:
        parser.error("missing the command after `--`")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num-processes and --devices-per-process must be >= 1")
    args.command = command
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    launcher = Launcher(args.command, num_processes=args.num_processes,
                        devices_per_process=args.devices_per_process,
                        port=args.port or free_port(), log_dir=args.log_dir,
                        timeout=args.timeout)
    previous = {s: signal.signal(s, launcher.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            launcher.start()
        except BaseException:
            launcher.stop_all()
            raise
        return launcher.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
