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
# Every API call needs a token: the server's first start wrote an admin token to
# .run/admin-token; `attune login` checks it and saves it (mode 0600) for the next commands.
if [ -f .run/admin-token ]; then
  step attune login --token-file .run/admin-token
  $attune login --token-file .run/admin-token
elif ! $attune token list >/dev/null 2>&1; then
  echo "the demo database already has API tokens but .run/admin-token is gone: log in with one (attune login), or drop the database (su postgres -c 'dropdb attune') and run make demo again" >&2
  exit 1
fi
step attune token create --name demo-runner --role executor
$attune token create --name demo-runner --role executor >/dev/null
step attune pack register examples/packs/hello --force
$attune pack register examples/packs/hello --force
step attune run hello.greet name=Ada --wait
$attune run hello.greet name=Ada --wait
step attune run hello.stats 'text=any image becomes a worker' --wait
$attune run hello.stats 'text=any image becomes a worker' --wait
step attune run hello.quick name=pool --wait '(a pooled action: the first run warms a container)'
$attune run hello.quick name=pool --wait
step attune run hello.quick name=again --wait '(the same warm container, no container start)'
$attune run hello.quick name=again --wait
step attune pool list
$attune pool list
step attune execution list
$attune execution list --limit 5
per_execution=$(docker ps -aq --filter label=attune.managed=true --filter label=attune.execution | wc -l)
warm=$(docker ps -q --filter label=attune.managed=true --filter label=attune.pool | wc -l)
printf '\nper-execution containers left behind: %s; warm pool containers kept ready: %s\n' "$per_execution" "$warm"
printf 'The server keeps running: try `%s execution get <id> --json`; `make down` stops it and retires the warm containers.\n' "$attune"
