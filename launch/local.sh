#!/usr/bin/env bash
# Start N trainer processes on this machine that form one multi-process JAX run.
#
#   launch/local.sh N --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]
#
# On CPU each process gets one device and gloo collectives (a small rehearsal of a multi-host
# run); on a multi-GPU host, set CUDA_VISIBLE_DEVICES per process yourself or run one process
# with all GPUs instead (the usual choice). Logs: DIR/logs/process_<i>.log. Ctrl-C (or SIGTERM
# to this script) preempts every process: each saves a checkpoint of the current step.
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: launch/local.sh NUM_PROCESSES --config=... --workdir=DIR [trainer flags]" >&2
  exit 2
fi
num=$1; shift
workdir=""
for arg in "$@"; do [[ $arg == --workdir=* ]] && workdir=${arg#--workdir=}; done
[[ -n $workdir ]] || { echo "error: --workdir=DIR is required" >&2; exit 2; }
port=${SAGD_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("localhost",0)); print(s.getsockname()[1])')}
mkdir -p "$workdir/logs"
python=${PYTHON:-python}
pids=()
for ((i = 0; i < num; i++)); do
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} "$python" -m sagd_jax.main "$@" \
    --coordinator_address="localhost:$port" --num_processes="$num" --process_id="$i" \
    >"$workdir/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for pid in "${pids[@]}"; do
  # A trapped signal ends ``wait`` early (status 128+N): wait again for the real exit status.
  while :; do
    code=0; wait "$pid" || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  [[ $code -eq 0 ]] || status=$code
done
# 75: stopped by the signal after saving (run the same command again to resume).
echo "processes finished (exit $status); logs in $workdir/logs" >&2
exit $status
