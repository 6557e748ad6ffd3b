#!/usr/bin/env bash
# Runs COMMAND on this TPU VM, detached under tmux (nohup without tmux), after the health check.
# Every worker of every slice runs this at the same time (launch/tpu.py run does).
#   bash ~/reason-jax/tpu_scripts/run.sh [--expected-devices N] [--hosts-per-slice H]
#        [--session NAME] [--no-health-check] [--foreground] -- reason-jax train ...
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
    --no-health-check) NO_HEALTH_CHECK=1; shift ;;
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
LOG_DIR="${REASON_JAX_LOG_DIR:-logs}"  # relative to the tree; launch/tpu.py reads logs/
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
LOG="$LOG_DIR/worker_${PROCESS_INDEX}.log"
EXIT_FILE="$LOG_DIR/worker_${PROCESS_INDEX}.exit"
JOB_FILE="$LOG_DIR/job_${PROCESS_INDEX}.sh"

# A previous job in this tmux session still holds the TPU: stop it and wait until it is gone.
if [[ -z "${FOREGROUND:-}" ]] && command -v tmux >/dev/null 2>&1; then
  OLD_PID="$(tmux list-panes -t "$SESSION" -F '#{pane_pid}' 2>/dev/null | head -n 1 || true)"
  tmux kill-session -t "$SESSION" 2>/dev/null || true
  for _ in $(seq 60); do
    [[ -n "$OLD_PID" ]] && kill -0 "$OLD_PID" 2>/dev/null || break
    sleep 0.5
  done
fi
rm -f "$EXIT_FILE"

# The job file carries this shell's environment (a tmux server started earlier would not), then
# the health check and the command; the group's exit code goes to the .exit file.
CHECK=""
if [[ -z "${NO_HEALTH_CHECK:-}" ]]; then
  CHECK="python tpu_scripts/health_check.py${EXPECTED:+ --expected-devices $EXPECTED} && "
fi
{
  echo "# written by tpu_scripts/run.sh: environment, then the job"
  export -p
  printf 'cd %q\n' "$ROOT"
  echo "{ $CHECK$(printf '%q ' "$@"); } >> $(printf '%q' "$LOG") 2>&1"
  echo "echo \$? > $(printf '%q' "$EXIT_FILE")"
} > "$JOB_FILE"

echo "=== $(date -u +%FT%TZ) process $PROCESS_INDEX: $*" >> "$LOG"
if [[ -n "${FOREGROUND:-}" ]]; then
  bash "$JOB_FILE"
  exit "$(cat "$EXIT_FILE")"
elif command -v tmux >/dev/null 2>&1; then
  tmux new-session -d -s "$SESSION" -c "$ROOT" "bash $(printf '%q' "$JOB_FILE")"
  echo "process $PROCESS_INDEX: started in tmux session $SESSION, log $LOG"
else
  nohup bash "$JOB_FILE" > /dev/null 2>&1 &
  echo "process $PROCESS_INDEX: started with nohup (pid $!), log $LOG"
fi
