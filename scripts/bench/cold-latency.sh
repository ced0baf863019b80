#!/usr/bin/env bash
#! Benchmark: cold per-execution latency of attune (both agent delivery paths) vs
#! `docker run --rm`, in one run, then the step-by-step breakdown of the cold path.
#! usage: scripts/bench/cold-latency.sh   (RUNS=30 by default)
set -euo pipefail
source "$(dirname "$0")/prepare.sh"
python3 scripts/bench/cold_latency.py --runs "${RUNS:-30}"
python3 scripts/bench/cold_breakdown.py --runs "${BREAKDOWN_RUNS:-20}"
