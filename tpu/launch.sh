#!/usr/bin/env bash
# Start `jaxrec train --multihost` on every worker of the slice, in the background (survives ssh
# disconnects); each worker logs to ~/logs/$RUN_NAME.log and writes its pid to ~/logs/$RUN_NAME.pid.
# Usage: tpu/launch.sh [--dry-run] [more jaxrec train flags...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

workdir="$MOUNT/runs/$RUN_NAME"
# On Cloud TPU VMs jax.distributed discovers the coordinator and every worker's process id itself, so
# --multihost needs no --coordinator/--num_processes/--process_id here (they are for GPU/CPU clusters).
# The timeouts travel as JAXREC_INIT_TIMEOUT / JAXREC_HEARTBEAT_TIMEOUT (exported below).
train=(jaxrec train --multihost --config "$CONFIG" --workdir "$workdir" --no_progress
       "--config.mesh.axes=$MESH_AXES" "--config.mesh.rules=$MESH_RULES")
# shellcheck disable=SC2206
[[ -n "$EXTRA_ARGS" ]] && train+=($EXTRA_ARGS)
train+=(${ARGS[@]+"${ARGS[@]}"})
cmd=""
for a in "${train[@]}"; do cmd+=" $(quote "$a")"; done

read -r -d '' remote <<REMOTE || true
set -euo pipefail
cd ~/$REMOTE_DIR && source .venv/bin/activate
mkdir -p ~/logs $workdir
if [[ -f ~/logs/$RUN_NAME.pid ]] && kill -0 \$(cat ~/logs/$RUN_NAME.pid) 2>/dev/null; then
  echo "worker \$(hostname): run $RUN_NAME already running (pid \$(cat ~/logs/$RUN_NAME.pid))"; exit 1
fi
export JAXREC_INIT_TIMEOUT=$INIT_TIMEOUT JAXREC_HEARTBEAT_TIMEOUT=$HEARTBEAT_TIMEOUT
nohup setsid$cmd > ~/logs/$RUN_NAME.log 2>&1 < /dev/null &
echo \$! > ~/logs/$RUN_NAME.pid
echo "worker \$(hostname): started pid \$(cat ~/logs/$RUN_NAME.pid), log ~/logs/$RUN_NAME.log"
REMOTE
note "launching on all $(num_workers) worker(s):$cmd"
on_workers all "$remote"
note "follow worker 0:  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/logs/$RUN_NAME.log'"
