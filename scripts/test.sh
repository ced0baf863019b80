#!/usr/bin/env bash
#! `make test` (and CI): brings up the services, builds the agent and the test images, checks
#! formatting and lints, runs every test, and fails if any Attune container is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-images.sh --all
bash scripts/second-engine.sh start  # after the images: it copies busybox:1.36 from the host engine
bash scripts/build-agent.sh

# No incremental caches: a full run builds ~70 test binaries, whose incremental state alone grew
# past 39 GB here; CI starts from a clean checkout and gains nothing from it.
export CARGO_INCREMENTAL=0
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

export ATTUNE_REQUIRE_AGENT_BINARY=1
export ATTUNE_AGENT_BINARY="$PWD/agent-dist/attune-agent-x86_64"
export ATTUNE_TEST_DATABASE_URL="${ATTUNE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export ATTUNE_TEST_SECOND_DOCKER_HOST="${ATTUNE_TEST_SECOND_DOCKER_HOST:-unix:///run/attune-engine2/docker.sock}"
export ATTUNE_TEST_MQ_URL="${ATTUNE_TEST_MQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# tests/e2e_broker_restart.rs and e2e_database_restart.rs stop and start RabbitMQ and
# PostgreSQL through scripts/services.sh, each alone in its test binary (cargo runs test binaries
# one after another, so no other test sees the outage).
# tests/e2e_dockerd_restart.rs stops and starts dockerd (alone in its test binary; cargo runs
# test binaries one after another). Set to 0 on a host whose engine must not be restarted.
export ATTUNE_TEST_RESTART_DOCKERD="${ATTUNE_TEST_RESTART_DOCKERD:-1}"
echo "[test] cargo test"
cargo test --workspace --no-fail-fast -- --test-threads="${ATTUNE_TEST_THREADS:-4}"

# Containers the tests made: every test server's controller id starts with "test-", and
# tests that drive Docker directly label theirs attune.test=true. (A demo server started by
# `make demo` may keep warm pool containers of its own; they are not a leak.)
second=(-H "$ATTUNE_TEST_SECOND_DOCKER_HOST")
leaked=$( (for engine in "" "${second[*]}"; do
             # shellcheck disable=SC2086
             docker $engine ps -a --filter label=attune.managed=true --format '{{.ID}} {{.Label "attune.controller"}}' | awk '$2 ~ /^test-/ {print $1}'
             # shellcheck disable=SC2086
             docker $engine ps -aq --filter label=attune.test=true
           done) | sort -u)
if [ -n "$leaked" ]; then
  echo "[test] FAIL: $(echo "$leaked" | wc -l) container(s) made by the tests remain:" >&2
  docker ps -a --filter label=attune.managed=true >&2
  docker ps -a --filter label=attune.test=true >&2
  docker "${second[@]}" ps -a --filter label=attune.managed=true >&2
  exit 1
fi
echo "[test] no container made by the tests is left behind (on either engine)"

# Broker leftovers of the tests: agent accounts of test controllers (attune-agent.test-...),
# and test queues and exchanges (attune.test.*, attune.controller.test-*).
management() { curl -sf -u guest:guest "http://127.0.0.1:15672/api/$1"; }
left_users=$(management 'users?columns=name' | grep -o '"name":"attune-agent\.test-[^"]*"' || true)
left_queues=$(management 'queues?columns=name' | grep -oE '"name":"attune\.(test\.|controller\.test-)[^"]*"' || true)
left_exchanges=$(management 'exchanges?columns=name' | grep -oE '"name":"attune\.(test\.|controller\.test-)[^"]*"' || true)
if [ -n "$left_users$left_queues$left_exchanges" ]; then
  echo "[test] FAIL: the tests left broker accounts, queues or exchanges:" >&2
  printf '%s\n' $left_users $left_queues $left_exchanges | head -50 >&2
  exit 1
fi
echo "[test] no broker account, queue or exchange made by the tests is left behind"
