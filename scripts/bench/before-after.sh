#!/usr/bin/env bash
#! Benchmark: cold and warm latency of two commits side by side in ONE interleaved run
#! (scripts/bench/before_after.py): `docker run --rm` vs cold `bench.echo` through the BEFORE
#! and the AFTER server, then a bare host spawn vs warm-pool `bench.warm_echo` through both.
#!
#! Each commit is checked out in a git worktree of its own under /var/tmp with its own target
#! dir, and its release attune-server, CLI and agent are built there (kept and reused when the
#! worktree is already at that commit), so edits in progress in this tree never reach either build.
#!
#! usage: scripts/bench/before-after.sh [BASE_REF]        (default 4bbe5f7)
#!        scripts/bench/before-after.sh --remove-worktrees  (removes both worktrees and builds)
#! env:   AFTER_REF   the after commit (default HEAD; uncommitted changes are never measured)
#!        RUNS        cold rounds (default 80)       WARM_RUNS  warm rounds (default 600)
#!        BEFORE_DIR  (default /var/tmp/attune-before)  AFTER_DIR (default /var/tmp/attune-after)
#! Every server, container, database and events queue it starts is removed at the end, also on
#! failure or Ctrl-C; the exit status is non-zero when anything failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

before_dir="${BEFORE_DIR:-/var/tmp/attune-before}"
after_dir="${AFTER_DIR:-/var/tmp/attune-after}"
log() { printf '[before-after] %s\n' "$*" >&2; }

if [ "${1:-}" = "--remove-worktrees" ]; then
  for dir in "$before_dir" "$after_dir"; do
    if git worktree list --porcelain | grep -qx "worktree $dir"; then
      git worktree remove --force "$dir" && log "removed worktree $dir"
    fi
  done
  git worktree prune
  exit 0
fi
case "${1:-}" in -h|--help) sed -n 's/^#! \{0,1\}//p' "$0"; exit 0 ;; esac

base_ref="${1:-4bbe5f7}"
after_ref="${AFTER_REF:-HEAD}"
# Resolved once: others may commit while this runs, and every step must use the same commits.
base_sha="$(git rev-parse --verify "$base_ref^{commit}")"
after_sha="$(git rev-parse --verify "$after_ref^{commit}")"

# Cleanup: benchlib records every server's controller id, database, events queue and pid in
# this file; BenchServer removes them itself, this trap makes sure even if Python died hard.
state_file="$(mktemp /tmp/attune-before-after.XXXXXX)"
export ATTUNE_BENCH_STATE_FILE="$state_file"
cleanup() {
  local status=$? line kind value exe container lines=()
  trap - EXIT INT TERM
  # Read first: rabbitmqctl and others would eat the rest of a `while read` loop's stdin.
  mapfile -t lines < "$state_file"
  for line in "${lines[@]}"; do
    read -r kind value <<< "$line"
    [ "$kind" = pid ] || continue
    exe="$(readlink "/proc/$value/exe" 2>/dev/null || true)"
    if [[ "$exe" == */attune-server ]]; then
      log "stopping leftover attune-server $value"
      kill -TERM "$value" 2>/dev/null || true
      for _ in $(seq 1 600); do [ -e "/proc/$value" ] || break; sleep 0.1; done
      kill -KILL "$value" 2>/dev/null || true
    fi
  done
  for line in "${lines[@]}"; do
    read -r kind value <<< "$line"
    case "$kind" in
      controller)
        # One at a time: parallel removal can deadlock Docker 20.10 (see docs/BENCHMARKS.md).
        for container in $(docker ps -aq --filter "label=attune.controller=$value" 2>/dev/null </dev/null); do
          docker rm -f "$container" >/dev/null 2>&1 </dev/null || true
        done ;;
      database)
        psql "${ATTUNE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}" \
          -qtAX -c "DROP DATABASE IF EXISTS $value WITH (FORCE)" >/dev/null 2>&1 </dev/null || true ;;
      queue)
        rabbitmqctl delete_queue "$value" >/dev/null 2>&1 </dev/null || true ;;
    esac
  done
  for container in $(docker ps -aq --filter "label=attune.bench=before-after" 2>/dev/null); do
    docker rm -f "$container" >/dev/null 2>&1 || true
  done
  rm -f "$state_file"
  [ "$status" = 0 ] || log "failed (exit status $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Checks out commit `sha` in the worktree `dir` (created if missing, moved if at another
# commit) and builds the release server, CLI and agent there, unless already built for it.
prepare_worktree() {
  local dir="$1" sha="$2" common
  if [ -e "$dir/.git" ]; then
    common="$(cd "$dir" && cd "$(git rev-parse --git-common-dir)" && pwd)"
    [ "$common" = "$(cd "$(git rev-parse --git-common-dir)" && pwd)" ] \
      || { log "$dir is not a worktree of $repo"; return 1; }
    if [ "$(git -C "$dir" rev-parse HEAD)" != "$sha" ]; then
      log "moving worktree $dir to $sha"
      git -C "$dir" checkout -q --force --detach "$sha"
    fi
  elif [ -e "$dir" ]; then
    log "$dir exists and is not a git worktree; remove it or set BEFORE_DIR/AFTER_DIR"
    return 1
  else
    log "creating worktree $dir at $sha"
    git worktree add -q --detach "$dir" "$sha"
  fi
  if [ -n "$(git -C "$dir" status --porcelain --untracked-files=normal)" ]; then
    log "worktree $dir has local changes; it must be a pristine checkout of $sha"
    return 1
  fi
  local stamp="$dir/target/.before-after-built"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$sha" ] && [ -x "$dir/target/release/attune-server" ] \
    && [ -x "$dir/target/release/attune" ] && [ -x "$dir/agent-dist/attune-agent-x86_64" ]; then
    log "reusing the build of $sha in $dir"
    return 0
  fi
  log "building $sha in $dir (release server, CLI, agent; own target dir)"
  (cd "$dir" && export CARGO_TARGET_DIR="$dir/target" \
    && cargo build -q --release -p attune-server -p attune-cli \
    && bash scripts/build-agent.sh >/dev/null)
  printf '%s\n' "$sha" > "$stamp"
}

describe() { git log -1 --format='%h (%cs) %s' "$1" | cut -c1-110; }

bash scripts/setup-host.sh >/dev/null
bash scripts/build-images.sh busybox >/dev/null

prepare_worktree "$before_dir" "$base_sha"
before_label="$(git rev-parse --short "$base_sha")"
before_description="$(describe "$base_sha")"
prepare_worktree "$after_dir" "$after_sha"
after_label="$(git rev-parse --short "$after_sha")"
after_description="$(describe "$after_sha")"

echo "before-after run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs:" \
  "base ref $base_ref = $base_sha, after ref $after_ref = $after_sha"
echo
python3 scripts/bench/before_after.py \
  --before-root "$before_dir" --before-label "$before_label" \
  --before-description "$before_description" \
  --after-root "$after_dir" --after-label "$after_label" \
  --after-description "$after_description" \
  --runs "${RUNS:-80}" --warm-runs "${WARM_RUNS:-600}"
