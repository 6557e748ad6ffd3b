"""Multi-host start-up: call `initialize()` once, at the entry point, before any JAX work.

Where the coordinator comes from, first match wins:

1. explicit arguments to `initialize(...)`;
2. `REASON_JAX_COORDINATOR`, `REASON_JAX_NUM_PROCESSES`, `REASON_JAX_PROCESS_ID` (set for each
   process by `launch/local.py`; usable by any launcher);
3. a Cloud TPU VM or GKE TPU pod (or `REASON_JAX_DISTRIBUTED=1`, e.g. SLURM): plain
   `jax.distributed.initialize()`, which reads the topology (and, for multislice, the
   `MEGASCALE_*` variables) from the TPU metadata / environment;
4. otherwise nothing: a single process.

`REASON_JAX_DISTRIBUTED=0` turns 3 off (e.g. two experiments on one single-host TPU VM).

    from reason_jax.sharding import distributed
    distributed.initialize()               # first thing in main()
    if distributed.is_main_process():      # metrics and logs: process 0 only
        ...
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR = "REASON_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "REASON_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "REASON_JAX_PROCESS_ID"
ENV_DISTRIBUTED = "REASON_JAX_DISTRIBUTED"

# Set by Cloud TPU VMs (multislice), GKE TPU pods and the TPU runtime.
_TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_ACCELERATOR_TYPE",
                 "MEGASCALE_COORDINATOR_ADDRESS")
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show up as Google PCI devices.

_initialized = False


def on_cloud_tpu() -> bool:
    """True on a Cloud TPU VM or a GKE TPU pod (cheap: environment and /dev, /sys only)."""
    if any(os.environ.get(name) for name in _TPU_ENV_VARS):
        return True
    if glob.glob("/dev/accel*"):  # v2-v4, v5e
        return True
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):  # v5p, v6e (vfio)
        try:
            with open(vendor_file) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"{name} must be an integer, got {value!r}") from e


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: int | Sequence[int] | None = None) -> bool:
    """Joins this process to the JAX distributed system, at most once per process.

    Returns True when the process is part of a multi-process run (initialized now or before),
    False for a plain single-process run. Must run before any JAX computation.
    """
    global _initialized
    if _initialized or jax.distributed.is_initialized():
        _initialized = True
        return True

    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)

    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise ValueError(
                f"coordinator {coordinator_address!r} given without num_processes/process_id "
                f"(pass them or set {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})")
        _use_gloo_on_cpu()
        log.info("jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
                 coordinator_address, num_processes, process_id)
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   local_device_ids=local_device_ids)
    else:
        mode = os.environ.get(ENV_DISTRIBUTED, "")
        if mode == "0" or (mode != "1" and not on_cloud_tpu()):
            return False  # single process: nothing to do
        log.info("jax.distributed.initialize() with cluster auto-detection")
        jax.distributed.initialize(local_device_ids=local_device_ids)
    _initialized = True
    return True


def _use_gloo_on_cpu() -> None:
    """CPU processes need a cross-process collectives backend; gloo ships with jaxlib."""
    platforms = os.environ.get("JAX_PLATFORMS") or jax.config.values.get("jax_platforms") or ""
    if platforms and "cpu" not in platforms.split(","):
        return
    if "jax_cpu_collectives_implementation" in jax.config.values:  # the default in new jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    elif "jax_cpu_enable_gloo_collectives" in jax.config.values:
        jax.config.update("jax_cpu_enable_gloo_collectives", True)


def is_main_process() -> bool:
    """True on process 0, the one that writes metrics, logs and `config.json`."""
    return jax.process_index() == 0


def process_summary() -> str:
    """One line for logs: `process 1/4, 4 local of 16 devices (tpu)`."""
    return (f"process {jax.process_index()}/{jax.process_count()}, "
            f"{jax.local_device_count()} local of {jax.device_count()} devices "
            f"({jax.default_backend()})")
