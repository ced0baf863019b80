#!/usr/bin/env bash
#! Times the two ways the agent reaches a container (put_archive per container, or the shared
#! read-only volume) against a baseline container with nothing delivered, on the local engine.
#! Every round runs `attune-agent --version` in a fresh container, so only a working delivery
#! counts. Prints a Markdown table (docs/BENCHMARKS.md, "Agent delivery").
#! usage: scripts/bench/agent-delivery.sh [--iterations N] [--agent PATH] [--image IMAGE]
#! Needs Docker, busybox:1.36 (scripts/build-images.sh) and the agent (scripts/build-agent.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

case "${1:-}" in
  -h|--help) sed -n 's/^#! \{0,1\}//p' "$0"; exit 0 ;;
esac

# Leftovers of an interrupted run.
docker ps -aq --filter label=attune.bench=agent-delivery | xargs -r -n1 docker rm -f >/dev/null  # one at a time (see benchlib.py)

exec cargo run --quiet -p attune-controller --example agent_delivery -- "$@"
