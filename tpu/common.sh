# shellcheck shell=bash
# Shared settings and helpers of the tpu/ scripts. Sourced, never run.
#
# Every setting is an environment variable with a default below; override it on the command line, e.g.
#   PROJECT=my-proj ZONE=us-west4-a BUCKET=gs://my-bucket tpu/create.sh
# or put the overrides in tpu/env.local.sh (sourced when present; not committed).
#
# Dry run: DRY_RUN=1 (or --dry-run / -n as the first argument) prints every command, shell-quoted, prefixed
# with "+ ", and runs none of them. Without it, commands are printed and then run; the first failure stops
# the script.

set -euo pipefail

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TPU_DIR/.." && pwd)"
if [[ -f "$TPU_DIR/env.local.sh" ]]; then
  # shellcheck disable=SC1091
  source "$TPU_DIR/env.local.sh"
fi

# --- what to create -------------------------------------------------------------------------------------
: "${PROJECT:=my-gcp-project}"                 # gcloud project id
: "${ZONE:=us-west4-a}"                        # a zone with v5e capacity (us-west4-a, us-central1-a, europe-west4-b, ...)
: "${TPU_NAME:=jaxrec-v5e-16}"                 # TPU VM / pod slice name
: "${ACCELERATOR_TYPE:=v5litepod-16}"          # v5litepod-8 (1 host), v5litepod-16 (4 hosts), v6e-16, v4-32, ...
: "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}"    # TPU software version for v5e (v6e: v2-alpha-tpuv6e; v4: tpu-ubuntu2204-base)
: "${SPOT:=0}"                                 # 1: Spot capacity (cheaper, can be preempted; resume from checkpoints)
: "${QUEUED:=0}"                               # 1: request through the queued-resources API (waits for capacity)
# --- where things go ------------------------------------------------------------------------------------
: "${BUCKET:=gs://my-jaxrec-bucket}"           # GCS bucket for checkpoints, metrics and logs
: "${MOUNT:=/mnt/gcs}"                         # where setup.sh mounts $BUCKET on every worker (gcsfuse)
: "${RUN_NAME:=sasrec_v5e16}"                  # run directory: $BUCKET/runs/$RUN_NAME (= $MOUNT/runs/$RUN_NAME)
: "${REMOTE_DIR:=jaxrec}"                      # checkout on every worker, relative to the ssh user's home
: "${JAX_PIP:=jax[tpu]==0.10.2}"               # the JAX build installed on the workers (pin it to the local one)
# --- what to run ----------------------------------------------------------------------------------------
: "${CONFIG:=sasrec_embedded}"                 # jaxrec config name or path (relative to the checkout)
# mesh over all chips of the slice (v5e-16: data=4 x model=4) and the logical-axis rules (row-shard the
# embedding tables over model); Python literals, as --config.mesh.axes / --config.mesh.rules take them
[[ -n "${MESH_AXES:-}" ]] || MESH_AXES='(("data", -1), ("model", 4))'
[[ -n "${MESH_RULES:-}" ]] || MESH_RULES='(("vocab", "model"),)'
: "${EXTRA_ARGS:=}"                            # more `jaxrec train` flags, e.g. --config.train.batch_size=4096
: "${INIT_TIMEOUT:=600}"                       # seconds the workers wait for each other at start-up
: "${HEARTBEAT_TIMEOUT:=120}"                  # seconds of silence after which a worker counts as dead

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" || "${1:-}" == "-n" ]]; then
  DRY_RUN=1
  shift
fi
ARGS=("$@")

# Hosts (workers) of a slice: v5e/v6e multi-host slices have 4 chips per host, v5litepod-1/4/8 and v6e-1/4/8
# one host; v4/v5p count TensorCores (2 per chip) with 4 chips per host. Override with NUM_WORKERS.
num_workers() {
  if [[ -n "${NUM_WORKERS:-}" ]]; then echo "$NUM_WORKERS"; return; fi
  local n="${ACCELERATOR_TYPE##*-}"
  case "$ACCELERATOR_TYPE" in
    v5litepod-*|v5e-*|v6e-*) if (( n <= 8 )); then echo 1; else echo $(( n / 4 )); fi ;;
    v4-*|v5p-*) if (( n <= 8 )); then echo 1; else echo $(( n / 8 )); fi ;;
    *) echo 1 ;;
  esac
}

# Shell-quote one word only when it needs it (readable dry runs that paste back into a shell).
quote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# Print a command as "+ cmd args..." and run it unless DRY_RUN=1.
run() {
  local out="+" a
  for a in "$@"; do out+=" $(quote "$a")"; done
  printf '%s\n' "$out"
  if [[ "$DRY_RUN" != "1" ]]; then
    "$@"
  fi
}

gcloud_tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ... with the project and zone
  local sub="$1"
  shift
  run gcloud compute tpus tpu-vm "$sub" "$@" --zone="$ZONE" --project="$PROJECT"
}

# Run a bash script on workers: on_workers all|N 'commands'
on_workers() {
  local which="$1" script="$2"
  gcloud_tpu ssh "$TPU_NAME" --worker="$which" --command="$script"
}

note() { printf '# %s\n' "$*"; }

check_placeholders() {  # refuse to touch real resources with the example defaults
  if [[ "$DRY_RUN" != "1" ]]; then
    if [[ "$PROJECT" == "my-gcp-project" || "$BUCKET" == "gs://my-jaxrec-bucket" ]]; then
      echo "error: set PROJECT and BUCKET (environment or tpu/env.local.sh) before running for real;" \
           "or use DRY_RUN=1 to only print the commands" >&2
      exit 2
    fi
  fi
}
