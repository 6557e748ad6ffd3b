"""Device check run by every process before the job (tpu_scripts/run.sh runs it first).

    python tpu_scripts/health_check.py --expected-devices 16

Joins the distributed system (reason_jax.sharding.distributed.initialize), then checks that
  * jax.device_count() equals the expected chip count (TPU v4/v5p/v5e/v6e: one device per chip),
  * this host sees its local devices (at least one, all owned by this process), and every host
    sees the same number (gathered across processes),
  * a cross-host all-reduce over every device gives the right answer.
Prints one JSON line per process; exits 1 on any failure, so a bad host stops the launch early.
Works on CPU too: `python launch/local.py --num-processes 2 --devices-per-process 4 --
python tpu_scripts/health_check.py --expected-devices 8`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a copied tree

from reason_jax.sharding import distributed  # noqa: E402


def check(expected_devices: int | None) -> list[str]:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    problems = []
    n_global, n_local = jax.device_count(), jax.local_device_count()
    if expected_devices is not None and n_global != expected_devices:
        problems.append(f"jax.device_count()={n_global}, expected {expected_devices}")
    if n_local == 0:
        problems.append("no local devices")
    if any(d.process_index != jax.process_index() for d in jax.local_devices()):
        problems.append("a local device belongs to another process")

    local_counts = multihost_utils.process_allgather(np.array([n_local])).ravel().tolist()
    if len(set(local_counts)) != 1:
        problems.append(f"hosts see different local device counts: {local_counts}")
    if sum(local_counts) != n_global:
        problems.append(f"local counts {local_counts} do not add up to {n_global} devices")

    # One all-reduce across every device of every host: each device holds 1.0.
    mesh = Mesh(np.array(jax.devices()), ("all",))
    ones = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("all")), np.ones(n_local, np.float32), (n_global,))
    total = float(jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(ones))
    if total != n_global:
        problems.append(f"all-reduce over {n_global} devices gave {total}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expected-devices", type=int, default=None,
                        help="global device count the slice(s) must show")
    args = parser.parse_args(argv)
    distributed.initialize()
    import jax

    try:
        problems = check(args.expected_devices)
    except Exception as e:  # a hung/broken collective shows up here, not as a traceback soup
        problems = [f"{type(e).__name__}: {e}"]
    report = {
        "health_check": "ok" if not problems else "FAILED",
        "host": socket.gethostname(),
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
        "platform": jax.default_backend(),
        "kinds": sorted({d.device_kind for d in jax.local_devices()}),
        "problems": problems,
    }
    print(json.dumps(report), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
