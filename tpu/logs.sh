#!/usr/bin/env bash
# Gather the run's logs (every worker) into $BUCKET/runs/$RUN_NAME/logs/ and ./tpu_runs/$RUN_NAME/, and
# download the run directory (checkpoints, metrics.jsonl, results.json) with DOWNLOAD=1.
# Usage: tpu/logs.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

local_dir="${LOCAL_RUNS:-tpu_runs}/$RUN_NAME"
n="$(num_workers)"
note "status of $RUN_NAME on $n worker(s)"
on_workers all "pid=\$(cat ~/logs/$RUN_NAME.pid 2>/dev/null || true); if [[ -n \"\$pid\" ]] && kill -0 \$pid 2>/dev/null; then echo \"\$(hostname): running\"; else echo \"\$(hostname): stopped\"; fi; tail -n 3 ~/logs/$RUN_NAME.log || true"
note "copying every worker's log to $BUCKET/runs/$RUN_NAME/logs/"
on_workers all "mkdir -p $MOUNT/runs/$RUN_NAME/logs && cp ~/logs/$RUN_NAME.log $MOUNT/runs/$RUN_NAME/logs/\$(hostname).log"
run mkdir -p "$local_dir/logs"
for ((i = 0; i < n; i++)); do
  gcloud_tpu scp "$TPU_NAME:~/logs/$RUN_NAME.log" "$local_dir/logs/worker$i.log" --worker="$i"
done
if [[ "${DOWNLOAD:-0}" == "1" ]]; then
  note "downloading checkpoints and metrics"
  run gcloud storage rsync --recursive "$BUCKET/runs/$RUN_NAME" "$local_dir/run"
else
  note "checkpoints and metrics stay in $BUCKET/runs/$RUN_NAME (DOWNLOAD=1 to fetch them)"
fi
