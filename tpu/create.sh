#!/usr/bin/env bash
# Create the Cloud TPU VM / pod slice ($TPU_NAME, $ACCELERATOR_TYPE in $ZONE). Usage: tpu/create.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

note "creating $ACCELERATOR_TYPE ($(num_workers) host(s)) '$TPU_NAME' in $ZONE, project $PROJECT"
spot=()
if [[ "$SPOT" == "1" ]]; then spot=(--spot); fi
if [[ "$QUEUED" == "1" ]]; then
  # queued resources: the request waits in a queue until capacity is free (recommended for pod slices)
  run gcloud compute tpus queued-resources create "$TPU_NAME-qr" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"} \
    --zone="$ZONE" --project="$PROJECT"
  note "wait until the state is ACTIVE: gcloud compute tpus queued-resources describe $TPU_NAME-qr --zone=$ZONE"
else
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${spot[@]+"${spot[@]}"}
fi
# the bucket for checkpoints and logs (same region as the TPU; ignore "already exists")
run gcloud storage buckets create "$BUCKET" --project="$PROJECT" --location="${ZONE%-*}" || true
