#!/usr/bin/env bash
#! `make demo`: installs and starts what is missing, builds, registers examples/packs/hello and
#! runs its actions in containers made from stock images, each with the injected static agent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-images.sh
bash scripts/build-agent.sh
cargo build -p attune-server -p attune-cli
bash scripts/server.sh start

attune=target/debug/attune
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
step attune pack register examples/packs/hello --force
$attune pack register examples/packs/hello --force
step attune run hello.greet name=Ada --wait
$attune run hello.greet name=Ada --wait
step attune run hello.stats 'text=any image becomes a worker' --wait
$attune run hello.stats 'text=any image becomes a worker' --wait
step attune execution list
$attune execution list --limit 5
leftover=$(docker ps -aq --filter label=attune.managed=true | wc -l)
printf '\ncontainers left behind: %s\n' "$leftover"
printf 'The server keeps running: try `%s execution get <id> --json`; stop it with `make down`.\n' "$attune"
