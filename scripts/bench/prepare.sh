#!/usr/bin/env bash
#! Sourced by the controller benchmarks: starts the services if needed, makes busybox:1.36,
#! builds the release agent, server and CLI. Each benchmark then runs its own attune-server
#! (own port, database, controller id and events queue), never the one on :8080.
#! DOCKER_HOST=unix:///path picks another engine (the servers and baselines follow it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/setup-host.sh >/dev/null
bash scripts/build-images.sh busybox >/dev/null
bash scripts/build-agent.sh >/dev/null 2>&1
cargo build -q --release -p attune-server -p attune-cli
