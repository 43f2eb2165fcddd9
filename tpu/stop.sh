#!/usr/bin/env bash
# Stop the run $RUN_NAME on every worker (by the pid launch.sh recorded). Usage: tpu/stop.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_placeholders

on_workers all "if [[ -f ~/logs/$RUN_NAME.pid ]]; then kill \$(cat ~/logs/$RUN_NAME.pid) 2>/dev/null && echo \"\$(hostname): stopped\" || echo \"\$(hostname): not running\"; fi"
