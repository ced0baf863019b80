#!/usr/bin/env bash
#! Benchmark: warm-pool latency and throughput vs bare host spawns, in one run, then the
#! step-by-step breakdown of one warm execution (release builds).
set -euo pipefail
source "$(dirname "$0")/prepare.sh"
python3 scripts/bench/warm_pool.py "$@"
python3 scripts/bench/warm_breakdown.py
