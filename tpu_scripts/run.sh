#!/usr/bin/env bash
# Runs COMMAND on this TPU VM, detached under tmux (nohup without tmux), after the health check.
# Every worker of every slice runs this at the same time (launch/tpu.py run does).
#   bash ~/reason-jax/tpu_scripts/run.sh --expected-devices 16 -- reason-jax train ...
# Log (health check, then the command): logs/worker_${PROCESS_INDEX}.log, PROCESS_INDEX being the
# JAX process index; the exit code lands in logs/worker_${PROCESS_INDEX}.exit when the job ends.
# --foreground runs the job in this shell and exits with its code (debugging, tests).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPECTED=""
HOSTS_PER_SLICE="${REASON_JAX_HOSTS_PER_SLICE:-1}"
SESSION="reason-jax"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --expected-devices) EXPECTED="$2"; shift 2 ;;
    --hosts-per-slice) HOSTS_PER_SLICE="$2"; shift 2 ;;
    --session) SESSION="$2"; shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "run.sh: missing the command after --" >&2; exit 2; }

cd "$ROOT"
source tpu_scripts/env.sh
# shellcheck disable=SC1091
[[ -f "$REASON_JAX_VENV/bin/activate" ]] && source "$REASON_JAX_VENV/bin/activate"

PROCESS_INDEX=$(( ${MEGASCALE_SLICE_ID:-0} * HOSTS_PER_SLICE + TPU_WORKER_ID ))
export PROCESS_INDEX
mkdir -p logs
LOG="logs/worker_${PROCESS_INDEX}.log"
EXIT_FILE="logs/worker_${PROCESS_INDEX}.exit"
rm -f "$EXIT_FILE"

# The job: health check, then the command; its exit code goes to the .exit file.
CHECK="python tpu_scripts/health_check.py${EXPECTED:+ --expected-devices $EXPECTED}"
JOB="{ $CHECK && $(printf '%q ' "$@"); } >> $LOG 2>&1;"
JOB+=" echo \$? > $EXIT_FILE"

echo "=== $(date -u +%FT%TZ) process $PROCESS_INDEX: $*" >> "$LOG"
if [[ -n "${FOREGROUND:-}" ]]; then
  bash -c "$JOB"
  exit "$(cat "$EXIT_FILE")"
elif command -v tmux >/dev/null 2>&1; then
  tmux kill-session -t "$SESSION" 2>/dev/null || true
  tmux new-session -d -s "$SESSION" "bash -c $(printf '%q' "$JOB")"
  echo "process $PROCESS_INDEX: started in tmux session $SESSION, log $ROOT/$LOG"
else
  nohup bash -c "$JOB" > /dev/null 2>&1 &
  echo "process $PROCESS_INDEX: started with nohup (pid $!), log $ROOT/$LOG"
fi
