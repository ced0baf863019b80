#!/usr/bin/env bash
#! Starts or stops one of the host's services the way scripts/setup-host.sh runs them (no
#! systemd here): `services.sh rabbitmq start|stop|status`, `services.sh postgres start|stop|status`.
#! The outage tests (crates/attune-server/tests/e2e_broker_restart.rs, e2e_database_restart.rs)
#! use it to restart the shared services; setup-host.sh uses it to start them.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

rabbitmq_up() { rabbitmqctl -q status >/dev/null 2>&1; }

rabbitmq_start() {
  rabbitmq_up && return 0
  log "starting rabbitmq"
  mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq 2>/dev/null || true
  # In its own session, so no signal meant for the caller (a test run) reaches it.
  (setsid su rabbitmq -s /bin/sh -c 'HOME=/var/lib/rabbitmq rabbitmq-server -detached' </dev/null 2>/dev/null) \
    || setsid rabbitmq-server -detached </dev/null
  for _ in $(seq 1 120); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 1; done
  rabbitmq_up || { echo "rabbitmq did not start" >&2; exit 1; }
}

rabbitmq_stop() {
  rabbitmq_up || return 0
  log "stopping rabbitmq"
  # `stop` waits until the node is down.
  rabbitmqctl -q stop >/dev/null
  for _ in $(seq 1 120); do rabbitmq_up || return 0; sleep 0.5; done
  echo "rabbitmq did not stop" >&2
  exit 1
}

postgres_up() { pg_lsclusters 2>/dev/null | grep -q '^15 *main.*online'; }

postgres_start() {
  if ! pg_lsclusters 2>/dev/null | grep -q '^15 *main'; then
    pg_createcluster 15 main
  fi
  postgres_up && return 0
  log "starting postgresql 15"
  pg_ctlcluster --skip-systemctl-redirect 15 main start
}

postgres_stop() {
  postgres_up || return 0
  log "stopping postgresql 15"
  # fast: ends the sessions (the clients see their connections drop), then stops.
  pg_ctlcluster --skip-systemctl-redirect 15 main stop -m fast
}

service="${1:-}"
verb="${2:-}"
case "$service:$verb" in
  rabbitmq:start) rabbitmq_start ;;
  rabbitmq:stop) rabbitmq_stop ;;
  rabbitmq:status) rabbitmq_up ;;
  postgres:start) postgres_start ;;
  postgres:stop) postgres_stop ;;
  postgres:status) postgres_up ;;
  *) echo "usage: services.sh rabbitmq|postgres start|stop|status" >&2; exit 2 ;;
esac
