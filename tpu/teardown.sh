#!/usr/bin/env bash
# Delete the TPU VM / slice (billing stops). The bucket is kept: checkpoints and logs stay in $BUCKET.
# Usage: tpu/teardown.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

if [[ "$QUEUED" == "1" ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME-qr" --force --quiet --zone="$ZONE" --project="$PROJECT"
else
  gcloud_tpu delete "$TPU_NAME" --quiet
fi
note "kept: $BUCKET/runs/$RUN_NAME (delete with: gcloud storage rm --recursive $BUCKET/runs/$RUN_NAME)"
