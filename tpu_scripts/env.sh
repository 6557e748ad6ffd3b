# Common environment for every process on a TPU VM. Sourced by run.sh and setup.sh; safe to
# source by hand (`source ~/reason-jax/tpu_scripts/env.sh`). Values already set win.

# Where setup.sh puts the Python environment.
export REASON_JAX_VENV="${REASON_JAX_VENV:-$HOME/reason-jax-venv}"

# libtpu logging: 0=INFO 1=WARNING 2=ERROR on stderr; full logs go to /tmp/tpu_logs.
export TPU_STDERR_LOG_LEVEL="${TPU_STDERR_LOG_LEVEL:-2}"
export TPU_MIN_LOG_LEVEL="${TPU_MIN_LOG_LEVEL:-0}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# Compiler / runtime flags. Empty by default; put per-experiment tuning here, for example
#   LIBTPU_INIT_ARGS="--xla_tpu_enable_async_collective_fusion=true"
#   XLA_FLAGS="--xla_dump_to=/tmp/xla_dump"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:-}"
export XLA_FLAGS="${XLA_FLAGS:-}"

# Multislice: queued resources created with --node-count publish MEGASCALE_COORDINATOR_ADDRESS,
# MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID (and MEGASCALE_PORT) in the VM's `tpu-env` metadata,
# which JAX and libtpu read. launch/tpu.py also exports them explicitly; fill any gap from the
# metadata so that both agree.
_reason_jax_tpu_env() {  # _reason_jax_tpu_env KEY -> value from tpu-env metadata, or nothing
  curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/tpu-env" 2>/dev/null \
    | sed -n "s/^$1: *'\{0,1\}\([^']*\)'\{0,1\}\$/\1/p" | head -n 1
}
if [[ "${MEGASCALE_NUM_SLICES:-1}" != "1" && -z "${MEGASCALE_COORDINATOR_ADDRESS:-}" ]]; then
  MEGASCALE_COORDINATOR_ADDRESS="$(_reason_jax_tpu_env MEGASCALE_COORDINATOR_ADDRESS)"
  export MEGASCALE_COORDINATOR_ADDRESS
fi

# This worker's index inside its slice (GKE sets TPU_WORKER_ID; TPU VMs have it in metadata).
if [[ -z "${TPU_WORKER_ID:-}" ]]; then
  TPU_WORKER_ID="$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || echo 0)"
  export TPU_WORKER_ID
fi
