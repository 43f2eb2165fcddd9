#!/usr/bin/env bash
# Install jaxrec (this checkout's HEAD) and JAX for TPU on every worker, and mount $BUCKET at $MOUNT.
# Usage: tpu/setup.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

archive="${TMPDIR:-/tmp}/jaxrec-src-$RUN_NAME.tar.gz"
note "packing the committed tree of $REPO_ROOT (uncommitted changes are not shipped)"
run git -C "$REPO_ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$archive" HEAD
note "copying it to all $(num_workers) worker(s)"
gcloud_tpu scp "$archive" "$TPU_NAME:~/jaxrec.tar.gz" --worker=all

# One script, run on every worker at once (--worker=all).
read -r -d '' remote <<REMOTE || true
set -euo pipefail
rm -rf ~/$REMOTE_DIR && tar -xzf ~/jaxrec.tar.gz -C ~
cd ~/$REMOTE_DIR
python3 -m venv .venv && source .venv/bin/activate
pip install -q --upgrade pip
pip install -q '$JAX_PIP' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
pip install -q -e .
python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)' || true
# shared run directory: the bucket mounted with gcsfuse, the same path on every worker
if ! command -v gcsfuse >/dev/null; then
  export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT
mkdir -p $MOUNT/runs ~/logs
REMOTE
on_workers all "$remote"
