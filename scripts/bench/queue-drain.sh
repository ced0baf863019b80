#!/usr/bin/env bash
#! Benchmark: drain rate of 100 000 queued pooled executions against a short queue measured
#! in the same run (about 6 minutes; the rest of the queue is canceled at the end).
set -euo pipefail
source "$(dirname "$0")/prepare.sh"
python3 scripts/bench/queue_drain.py "$@"
