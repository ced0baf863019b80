#!/usr/bin/env bash
#! Benchmark: controller memory with 0, 100 and 500 idle pooled busybox containers (RSS), then
#! the same under heaptrack (live vs peak heap) when heaptrack is installed. About 10 minutes.
set -euo pipefail
source "$(dirname "$0")/prepare.sh"
python3 scripts/bench/controller_rss.py "$@"
if command -v heaptrack >/dev/null 2>&1; then
  python3 scripts/bench/controller_rss.py --heaptrack
fi
