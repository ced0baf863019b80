#!/usr/bin/env bash
#! Benchmark: the agent's stripped size and the idle RSS of a connected worker agent, against
#! a baseline measured in the same run (busybox `sleep`, a static process doing nothing).
#! Prints a markdown table (docs/BENCHMARKS.md, section "Agent footprint").
#! usage: scripts/bench/agent-footprint.sh   (needs RabbitMQ on 127.0.0.1:5672, busybox, ss)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/build-agent.sh >/dev/null 2>&1
agent=agent-dist/attune-agent-x86_64
mq_url="${ATTUNE_TEST_MQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
agent_id="footprint-$$"
events_queue="attune.bench.$agent_id.events"
busybox_binary="$(command -v busybox)"

status_kib() { awk -v field="$2:" '$1 == field {print $2}' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

workdir="$(mktemp -d)"
agent_pid=""
baseline_pid=""
cleanup() {
  [ -z "$agent_pid" ] || { kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; }
  [ -z "$baseline_pid" ] || kill "$baseline_pid" 2>/dev/null || true
  rm -rf "$workdir"
  # The agent declares its queues durable: delete them when rabbitmqctl is at hand.
  if command -v rabbitmqctl >/dev/null 2>&1; then
    for queue in "$events_queue" "attune.agent.$agent_id.jobs"; do
      rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
    done
  fi
}
trap cleanup EXIT
ATTUNE_AGENT_MQ_URL="$mq_url" ATTUNE_AGENT_ID="$agent_id" ATTUNE_AGENT_MODE=worker \
  ATTUNE_AGENT_EVENTS_QUEUE="$events_queue" ATTUNE_AGENT_WORKDIR="$workdir" "$agent" 2>/dev/null &
agent_pid=$!
"$busybox_binary" sleep 60 &
baseline_pid=$!
# Connected: the agent has an established TCP connection to the broker.
connected=no
for _ in $(seq 1 50); do
  if ss -tnp 2>/dev/null | grep "pid=$agent_pid," | grep -q ESTAB; then connected=yes; break; fi
  sleep 0.1
done
[ "$connected" = yes ] || { echo "agent-footprint.sh: the agent did not connect to $mq_url" >&2; exit 1; }
# Idle: registration and queue declarations are done well within this; RSS is read after.
sleep 2
size=$(stat -c %s "$agent")
baseline_size=$(stat -c %s "$busybox_binary")
printf '| measure | attune-agent | baseline (busybox sleep) | ratio |\n|---|---|---|---|\n'
printf '| stripped binary size | %s KiB | %s KiB | %s |\n' $((size / 1024)) $((baseline_size / 1024)) \
  "$(ratio "$size" "$baseline_size")"
for field in VmRSS RssAnon RssFile; do
  agent_value=$(status_kib $agent_pid $field)
  baseline_value=$(status_kib $baseline_pid $field)
  printf '| idle %s, connected worker | %s KiB | %s KiB | %s |\n' "$field" "$agent_value" \
    "$baseline_value" "$(ratio "$agent_value" "$baseline_value")"
done
printf '| threads | %s | %s | |\n' "$(status_kib $agent_pid Threads)" "$(status_kib $baseline_pid Threads)"
