#!/usr/bin/env bash
# Prepares one TPU VM: a venv with jax[tpu] and this project installed editable from the copied
# tree. Idempotent: run it again after copying new code (launch/tpu.py setup does).
#   bash ~/reason-jax/tpu_scripts/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tpu_scripts/env.sh"

if ! command -v tmux >/dev/null 2>&1; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux \
    || echo "setup: tmux not installed; run.sh falls back to nohup"
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x "$REASON_JAX_VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$REASON_JAX_VENV"
fi
PIP=("$REASON_JAX_VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "jax[tpu]"
# [gcs]: gcsfs, so gs:// workdirs, checkpoints and data work (etils.epath, Orbax).
"${PIP[@]}" -e "$ROOT[gcs]"

"$REASON_JAX_VENV/bin/python" -c "import jax, reason_jax; print('setup ok: jax', jax.__version__)"
