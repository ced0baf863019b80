#!/usr/bin/env bash
#! Starts or stops attune-server in the background for the demo (logs in .run/server.log).
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=.run
pid_file=$run_dir/server.pid
mkdir -p "$run_dir"

is_running() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if is_running; then echo "attune-server already running (pid $(cat "$pid_file"))"; exit 0; fi
    : "${ATTUNE__DATABASE__URL:=postgres://postgres:postgres@127.0.0.1:5432/attune}"
    export ATTUNE__DATABASE__URL
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'attune'\"" | grep -q 1 \
      || su postgres -c "createdb attune"
    # The first start on an empty database writes its admin token here (mode 0600).
    : "${ATTUNE__SERVER__ADMIN_TOKEN_FILE:=$run_dir/admin-token}"
    export ATTUNE__SERVER__ADMIN_TOKEN_FILE
    # Secret parameters are sealed with this keyring (written with one key when missing).
    : "${ATTUNE__SERVER__SECRETS_KEY_FILE:=$run_dir/secrets-key}"
    export ATTUNE__SERVER__SECRETS_KEY_FILE
    nohup "${ATTUNE_SERVER_BIN:-target/debug/attune-server}" --bind 127.0.0.1:8080 >"$run_dir/server.log" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 100); do
      if curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1; then
        echo "attune-server ready on http://127.0.0.1:8080 (pid $(cat "$pid_file"), log $run_dir/server.log)"
        exit 0
      fi
      is_running || { echo "attune-server exited; last log lines:" >&2; tail -20 "$run_dir/server.log" >&2; exit 1; }
      sleep 0.2
    done
    echo "attune-server did not become ready; see $run_dir/server.log" >&2
    curl -sS http://127.0.0.1:8080/readyz >&2 || true
    exit 1
    ;;
  stop)
    if is_running; then
      kill "$(cat "$pid_file")"
      for _ in $(seq 1 100); do is_running || break; sleep 0.1; done
      echo "attune-server stopped"
    fi
    rm -f "$pid_file"
    ;;
  *) echo "usage: scripts/server.sh start|stop" >&2; exit 2 ;;
esac
