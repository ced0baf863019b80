#!/usr/bin/env bash
#! Installs and starts everything Attune needs on a Debian host, idempotently:
#! Docker engine (Debian docker.io), RabbitMQ, PostgreSQL 15, musl tools, the Rust musl target.
#! Safe to run again: each step checks first and does nothing when already done.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "setup-host.sh must run as root" >&2; exit 1; }; }
need_root

packages=()
command -v dockerd >/dev/null 2>&1 || packages+=(docker.io)
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || packages+=(rabbitmq-server)
command -v musl-gcc >/dev/null 2>&1 || packages+=(musl-tools)
command -v debootstrap >/dev/null 2>&1 || packages+=(debootstrap)
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q 'static' || dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
[ -d /usr/lib/postgresql/15 ] || packages+=(postgresql-15)
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
if [ ${#packages[@]} -gt 0 ]; then
  log "installing: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# Docker engine: Debian's dockerd, started by hand (no systemd here).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi
log "docker engine: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# PostgreSQL 15 and RabbitMQ, started without systemd (scripts/services.sh knows how).
services="$(dirname "$0")/services.sh"
bash "$services" postgres start
su postgres -c "psql -tAc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
log "postgresql 15 up"
bash "$(dirname "$0")/rabbitmq-config.sh"
bash "$services" rabbitmq start
log "rabbitmq up (amqp 5672, amqps 5671, management 127.0.0.1:15672)"

# Rust target for the static agent.
if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  log "adding rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
log "host ready"
