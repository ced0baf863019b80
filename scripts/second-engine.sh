#!/usr/bin/env bash
#! A second Docker engine beside the host's, for tests of two controllers on two Docker hosts
#! (crates/attune-server/tests/e2e_two_controllers.rs).
#!
#!   bash scripts/second-engine.sh start    # idempotent: starts it if needed, loads the images
#!   bash scripts/second-engine.sh status   # exit 0 when it answers, 1 otherwise
#!   bash scripts/second-engine.sh stop     # stops it (by pidfile) and waits
#!
#! It has its own socket, data root, exec root (so dockerd starts its own containerd under
#! it), pidfile, daemon config and containerd namespaces, no bridge and no iptables rules: it
#! shares nothing with the host's engine. Tests run containers on it with host networking.
#! It cannot pull (nothing but loopback here): `start` copies the images the tests use from
#! the host's engine with `docker save | docker load`.
#!
#! Overridable: ATTUNE_ENGINE2_DIR (/run/attune-engine2), ATTUNE_ENGINE2_DATA
#! (/var/lib/attune-engine2), ATTUNE_ENGINE2_LOG (/var/log/attune-engine2.log),
#! ATTUNE_ENGINE2_IMAGES (space-separated; default busybox:1.36).
set -euo pipefail

RUN_DIR="${ATTUNE_ENGINE2_DIR:-/run/attune-engine2}"
DATA_ROOT="${ATTUNE_ENGINE2_DATA:-/var/lib/attune-engine2}"
LOG_FILE="${ATTUNE_ENGINE2_LOG:-/var/log/attune-engine2.log}"
SOCKET="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
EXEC_ROOT="$RUN_DIR/exec"
CONFIG_FILE="$RUN_DIR/daemon.json"
# dockerd under another name (a hard link, or a copy across file systems): `pidof dockerd`
# (tests/e2e_dockerd_restart.rs, which restarts the host's engine) must never find this one.
BINARY="$DATA_ROOT/bin/dockerd-engine2"
HOST="unix://$SOCKET"
# The images the two-controller tests run (examples/packs/hello's greet and the test packs
# lifecycle and pooled all use busybox:1.36).
IMAGES="${ATTUNE_ENGINE2_IMAGES:-busybox:1.36}"

log() { printf '[second-engine] %s\n' "$*"; }
fail() {
  printf '[second-engine] FAIL: %s\n' "$*" >&2
  if [ -f "$LOG_FILE" ]; then
    printf '[second-engine] last lines of %s:\n' "$LOG_FILE" >&2
    tail -n 30 "$LOG_FILE" >&2
  fi
  exit 1
}

engine2() { docker -H "$HOST" "$@"; }

answers() { engine2 info >/dev/null 2>&1; }

# The pid in the pidfile, when that process is alive and is a dockerd.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  grep -q dockerd "/proc/$pid/comm" 2>/dev/null || return 1
  grep -qF -- "$SOCKET" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# Links (or copies) the installed dockerd to $BINARY, again after an upgrade replaced it.
ensure_binary() {
  local installed
  installed=$(command -v dockerd) || fail "dockerd not installed (run scripts/setup-host.sh)"
  if [ -x "$BINARY" ] && { [ "$BINARY" -ef "$installed" ] || cmp -s "$BINARY" "$installed"; }; then
    return 0
  fi
  mkdir -p "$(dirname "$BINARY")"
  if ln -f "$installed" "$BINARY" 2>/dev/null; then
    log "linked $installed to $BINARY"
  else
    cp -f "$installed" "$BINARY.tmp" && mv -f "$BINARY.tmp" "$BINARY"
    log "copied $installed to $BINARY"
  fi
}

clean_stale_containerd() {
  local state="$EXEC_ROOT/containerd" pid
  for pid in $(pgrep -f -- "--config $state/containerd.toml" || true); do
    log "killing containerd pid $pid left by a stopped engine"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    pgrep -f -- "--config $state/containerd.toml" >/dev/null || break
    sleep 0.1
  done
  rm -f "$state/containerd.pid" "$state/containerd.sock" "$state/containerd.sock.ttrpc" \
    "$state/containerd-debug.sock"
}

# Note: starting this engine removes the host engine's docker0 bridge (both daemons share the
# network namespace), so every test container uses host or no networking.
start_engine() {
  [ "$(id -u)" = 0 ] || fail "must run as root (it starts a dockerd)"
  if answers; then
    log "already running (pid $(running_pid || echo '?'), $HOST)"
    return 0
  fi
  if pid=$(running_pid); then
    # Started but not answering yet (another start in flight, or it is shutting down).
    log "dockerd pid $pid exists but does not answer yet; waiting for it"
  else
    ensure_binary
    mkdir -p "$RUN_DIR" "$EXEC_ROOT" "$DATA_ROOT" "$(dirname "$LOG_FILE")"
    rm -f "$PIDFILE" "$SOCKET"
    # What a killed engine left (the machine's processes ended, e.g. between a session and
    # CI): its containerd, orphaned, and containerd's pid file and sockets. dockerd would
    # wait for that containerd (or a pid reused by something else) and time out.
    clean_stale_containerd
    # Its own (empty) daemon config: the host's /etc/docker/daemon.json, if one appears, may
    # name the host's socket or bridge.
    [ -f "$CONFIG_FILE" ] || echo '{}' >"$CONFIG_FILE"
    # No --containerd: with its own exec root dockerd starts and supervises its own
    # containerd (socket under $EXEC_ROOT/containerd); the namespaces keep the two engines
    # apart even if both ever use a system containerd at /run/containerd.
    log "starting dockerd on $HOST (data root $DATA_ROOT, log $LOG_FILE)"
    {
      echo "---- $(date -Is) second-engine.sh start"
    } >>"$LOG_FILE"
    # setsid: in its own session, so no signal meant for the caller (or a test) reaches it.
    setsid nohup "$BINARY" \
      --host "$HOST" \
      --data-root "$DATA_ROOT" \
      --exec-root "$EXEC_ROOT" \
      --pidfile "$PIDFILE" \
      --config-file "$CONFIG_FILE" \
      --containerd-namespace attune-engine2 \
      --containerd-plugins-namespace attune-engine2-plugins \
      --bridge none \
      --iptables=false \
      --ip6tables=false \
      --ip-masq=false \
      --userland-proxy=false \
      --cgroup-parent /attune-engine2 \
      >>"$LOG_FILE" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 120); do
    answers && break
    sleep 0.5
  done
  answers || fail "dockerd on $HOST did not answer 'docker info' within 60s"
  log "up: $(engine2 version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), pid $(running_pid || echo '?')"
}

load_images() {
  local image
  for image in $IMAGES; do
    if engine2 image inspect "$image" >/dev/null 2>&1; then
      local here there
      here=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
      there=$(engine2 image inspect --format '{{.Id}}' "$image")
      if [ -z "$here" ] || [ "$here" = "$there" ]; then
        log "image $image already present"
        continue
      fi
      log "image $image differs from the host's ($there vs $here): loading again"
    fi
    docker image inspect "$image" >/dev/null 2>&1 ||
      fail "image $image is not on the host's engine either (run scripts/build-images.sh)"
    log "loading image $image from the host's engine"
    docker save "$image" | engine2 load >/dev/null || fail "docker save $image | docker -H $HOST load failed"
  done
}

stop_engine() {
  local pid
  if ! pid=$(running_pid); then
    if answers; then
      fail "$HOST answers but $PIDFILE names no live dockerd; stop it by hand"
    fi
    log "not running"
    rm -f "$PIDFILE"
    return 0
  fi
  log "stopping dockerd pid $pid"
  kill -TERM "$pid"
  # dockerd stops its containers (10 s each by default) and its containerd before exiting.
  for _ in $(seq 1 120); do
    [ -d "/proc/$pid" ] || break
    sleep 0.5
  done
  if [ -d "/proc/$pid" ]; then
    log "dockerd pid $pid still alive after 60s: SIGKILL"
    kill -KILL "$pid" || true
    for _ in $(seq 1 20); do
      [ -d "/proc/$pid" ] || break
      sleep 0.5
    done
  fi
  [ -d "/proc/$pid" ] && fail "dockerd pid $pid did not exit"
  rm -f "$PIDFILE"
  log "stopped"
}

status_engine() {
  if answers; then
    log "running (pid $(running_pid || echo '?'), $HOST, $(engine2 ps -q | wc -l) running container(s), images: $(engine2 images --format '{{.Repository}}:{{.Tag}}' | tr '\n' ' '))"
    return 0
  fi
  if pid=$(running_pid); then
    log "dockerd pid $pid exists but $HOST does not answer"
  else
    log "not running"
  fi
  return 1
}

case "${1:-}" in
  start)
    start_engine
    load_images
    ;;
  stop) stop_engine ;;
  status) status_engine ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
