#!/usr/bin/env bash
#! Benchmark: warm-pool latency and throughput vs bare host spawns, in one run (release builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup-host.sh >/dev/null
bash scripts/build-images.sh >/dev/null
bash scripts/build-agent.sh >/dev/null 2>&1
cargo build -q --release -p attune-server -p attune-cli
bash scripts/server.sh stop >/dev/null
ATTUNE_SERVER_BIN=target/release/attune-server bash scripts/server.sh start
target/release/attune pack register scripts/bench/packs/bench --force >/dev/null
python3 scripts/bench/warm_pool.py "$@"
