#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice (one process per host; JAX auto-detects the
# slice's coordinator and process ids).
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/cifar10_ddpmpp.py --workdir=/mnt/shared/run
#
# Assumes the repository is checked out at ~/sagd-jax on each worker and installed
# (pip install -e ~/sagd-jax plus jax[tpu]); the workdir must be shared by all workers (a
# mount such as gcsfuse or Filestore). Re-running the same command resumes from the latest checkpoint; a
# maintenance event's SIGTERM makes the run checkpoint and exit.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE --config=... --workdir=... [trainer flags]" >&2
  exit 2
fi
tpu=$1 zone=$2; shift 2
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/sagd-jax && python3 -m sagd_jax.main $args"
