#!/usr/bin/env bash
#! Benchmark: the agent's stripped size and the idle RSS of a connected worker agent, against
#! a baseline measured in the same run (busybox `sleep`, a static process doing nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/build-agent.sh >/dev/null 2>&1
agent=agent-dist/attune-agent-x86_64
mq_url="${ATTUNE_TEST_MQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
agent_id="footprint-$$"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

ATTUNE_AGENT_MQ_URL="$mq_url" ATTUNE_AGENT_ID="$agent_id" ATTUNE_AGENT_MODE=worker \
  ATTUNE_AGENT_EVENTS_QUEUE="attune.bench.$agent_id.events" "$agent" 2>/dev/null &
agent_pid=$!
busybox sleep 60 &
baseline_pid=$!
trap 'kill $agent_pid $baseline_pid 2>/dev/null || true' EXIT
# Connected and idle: give it time to register and settle (its RSS is read after).
for _ in $(seq 1 50); do
  grep -q ESTAB <(ss -tnp 2>/dev/null | grep "pid=$agent_pid" || true) && break
  sleep 0.1
done
sleep 2
agent_rss=$(rss_kib $agent_pid)
baseline_rss=$(rss_kib $baseline_pid)
size=$(stat -c %s "$agent")
printf '| measure | attune-agent | baseline (busybox sleep) | ratio |\n|---|---|---|---|\n'
printf '| stripped binary size | %s KiB | %s KiB | %.2f |\n' $((size / 1024)) $(( $(stat -c %s /bin/busybox) / 1024 )) \
  "$(awk -v a="$size" -v b="$(stat -c %s /bin/busybox)" "BEGIN {print a / b}")"
printf '| idle RSS, connected worker | %s KiB | %s KiB | %.2f |\n' "$agent_rss" "$baseline_rss" \
  "$(awk -v a="$agent_rss" -v b="$baseline_rss" "BEGIN {print a / b}")"
