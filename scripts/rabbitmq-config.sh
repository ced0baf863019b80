#!/usr/bin/env bash
#! Configures this machine's RabbitMQ the way Attune expects it, idempotently, and restarts it
#! when the configuration changed:
#! - the management plugin (the controller makes one broker user per agent through its HTTP
#!   API), listening on 127.0.0.1:15672 only;
#! - a TLS listener on 5671 beside plain AMQP on 5672, with a CA and a server certificate for
#!   localhost / 127.0.0.1 made here once (/etc/rabbitmq/tls/{ca,server,server-key}.pem; the
#!   tests and `make demo` trust ca.pem).
#! Production brokers are configured by their operators; docs/SECURITY.md says what Attune needs.
set -euo pipefail

log() { printf '[rabbitmq-config] %s\n' "$*" >&2; }
tls=/etc/rabbitmq/tls
mkdir -p "$tls"

if [ ! -s "$tls/ca.pem" ] || [ ! -s "$tls/server.pem" ] || [ ! -s "$tls/server-key.pem" ]; then
  log "making a CA and a server certificate for localhost in $tls"
  work="$(mktemp -d)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=attune test CA" \
    -keyout "$work/ca-key.pem" -out "$work/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$work/server-key.pem" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
  install -m 0644 "$work/ca.pem" "$tls/ca.pem"
  install -m 0644 "$work/server.pem" "$tls/server.pem"
  install -m 0640 "$work/server-key.pem" "$tls/server-key.pem"
  chown root:rabbitmq "$tls/server-key.pem" 2>/dev/null || true
  rm -rf "$work"
fi

config="$(cat <<CONF
# Written by Attune's scripts/rabbitmq-config.sh.
listeners.tcp.local = 127.0.0.1:5672
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server-key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
CONF
)"
plugins='[rabbitmq_management].'
changed=0
if [ "$(cat /etc/rabbitmq/rabbitmq.conf 2>/dev/null)" != "$config" ]; then
  printf '%s\n' "$config" >/etc/rabbitmq/rabbitmq.conf
  changed=1
fi
if [ "$(cat /etc/rabbitmq/enabled_plugins 2>/dev/null)" != "$plugins" ]; then
  printf '%s\n' "$plugins" >/etc/rabbitmq/enabled_plugins
  changed=1
fi
services="$(dirname "$0")/services.sh"
if [ "$changed" = 1 ] && bash "$services" rabbitmq status; then
  log "configuration changed: restarting rabbitmq"
  bash "$services" rabbitmq stop
fi
