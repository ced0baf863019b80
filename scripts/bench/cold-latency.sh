#!/usr/bin/env bash
#! Benchmark: cold per-execution latency of attune vs `docker run --rm`, in one run.
#! Uses the release server and agent; starts the services and the server if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup-host.sh >/dev/null
bash scripts/build-images.sh >/dev/null
bash scripts/build-agent.sh >/dev/null
cargo build -q --release -p attune-server -p attune-cli
bash scripts/server.sh stop >/dev/null
ATTUNE_SERVER_BIN=target/release/attune-server bash scripts/server.sh start
target/release/attune pack register scripts/bench/packs/bench --force >/dev/null
python3 scripts/bench/cold_latency.py --runs "${RUNS:-30}" "$@"
