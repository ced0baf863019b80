#!/usr/bin/env bash
#! Benchmark: a trivial action routed to a long-lived worker (busybox with the agent as its
#! entrypoint) against the same action in a warm pool and a bare host spawn, latency and
#! throughput in one run (release builds; scripts/bench/worker_bench.py).
set -euo pipefail
source "$(dirname "$0")/prepare.sh"
python3 scripts/bench/worker_bench.py "$@"
