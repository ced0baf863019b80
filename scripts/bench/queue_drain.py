#!/usr/bin/env python3
"""Drain rate of a deep queue: 100 000 `requested` executions of the pooled `bench.warm_echo`
inserted in bulk (one SQL statement) into a private attune-server's database, drained through
its warm pool (concurrency 4) for a bounded time; the rate in each window of the run from the
executions' own finished_at, against the rate of a short queue (2 000) measured in the same
run just before. Afterwards every execution still `requested` is moved to `canceled` in one
UPDATE, the in-flight ones finish, and the server is stopped and its database dropped.

Also shows the plan of the scheduler's claim query (without FOR UPDATE) at the start and at
the end, which is where a queue table degrades when dead index entries pile up.

Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import time

from benchlib import BenchServer, log

ACTION = "bench.warm_echo"
CLAIM_PLAN = ("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id FROM executions "
              "WHERE status = 'requested' ORDER BY id LIMIT 16")


def insert_requested(server, total):
    first_id = int(server.sql("SELECT coalesce(max(id), 0) FROM executions")[0][0]) + 1
    started = time.time()
    server.sql(
        "INSERT INTO executions (action_ref, action_id, status, parameters) "
        f"SELECT a.ref, a.id, 'requested', '{{}}'::jsonb FROM actions a, "
        f"generate_series(1, {int(total)}) WHERE a.ref = '{ACTION}'")
    return first_id, started, time.time() - started


def finished_count(server, first_id):
    return int(server.sql(
        f"SELECT count(*) FROM executions WHERE id >= {first_id} AND finished_at IS NOT NULL")[0][0])


def claim_plan(server):
    lines = [row[0] for row in server.sql(CLAIM_PLAN)]
    return [line for line in lines if "Buffers" in line or "Execution Time" in line
            or "Index" in line][:4]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--short-queue", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=300, help="how long to drain the deep queue")
    parser.add_argument("--window", type=int, default=30, help="seconds per reported window")
    args = parser.parse_args()

    with BenchServer("queue-drain") as server:
        server.register_pack("bench")
        log("warm-up: 20 executions (fills the pool)")
        for _ in range(20):
            server.wait_terminal(server.submit(ACTION), 0.001)

        log(f"short queue: {args.short_queue} executions")
        first_id, started, _ = insert_requested(server, args.short_queue)
        deadline = time.monotonic() + 600
        while finished_count(server, first_id) < args.short_queue:
            if time.monotonic() > deadline:
                raise SystemExit("the short queue did not drain within 600 s")
            time.sleep(0.2)
        last = float(server.sql(
            f"SELECT extract(epoch FROM max(finished_at)) FROM executions WHERE id >= {first_id}")[0][0])
        short_rate = args.short_queue / (last - started)

        log(f"deep queue: inserting {args.queued} executions")
        first_id, started, insert_seconds = insert_requested(server, args.queued)
        plan_start = claim_plan(server)
        log(f"inserted in {insert_seconds:.1f} s; draining for {args.seconds} s")
        time.sleep(args.seconds)
        plan_end = claim_plan(server)
        canceled = int(server.sql(
            "WITH canceled AS (UPDATE executions SET status = 'canceled', finished_at = now(), "
            "error = 'canceled by the queue-drain benchmark', failure_kind = 'canceled', "
            "cancel_requested = true WHERE status = 'requested' AND id >= "
            f"{first_id} RETURNING 1) SELECT count(*) FROM canceled")[0][0])
        log(f"canceled {canceled} queued executions; waiting for the in-flight ones")
        deadline = time.monotonic() + 120
        while int(server.sql("SELECT count(*) FROM executions WHERE status IN "
                             "('requested', 'scheduled', 'running')")[0][0]) > 0:
            if time.monotonic() > deadline:
                raise SystemExit("in-flight executions did not end within 120 s")
            time.sleep(0.2)
        rows = server.sql(
            "SELECT floor((extract(epoch FROM finished_at) - "
            f"{started}) / {args.window})::int AS window, count(*), "
            "count(*) FILTER (WHERE status <> 'succeeded') FROM executions "
            f"WHERE id >= {first_id} AND status <> 'canceled' GROUP BY 1 ORDER BY 1")
        drained = sum(int(row[1]) for row in rows)

    print(f"deep queue: {args.queued} executions inserted in {insert_seconds:.1f} s, drained for "
          f"{args.seconds} s ({drained} ran, {canceled} canceled afterwards); short queue of "
          f"{args.short_queue} drained just before at **{short_rate:.0f} actions/s**\n")
    print("| window (s after the insert) | actions/s | ÷ short-queue rate | failed |")
    print("|---|---:|---:|---:|")
    for window, count, failed in rows:
        window = int(window)
        start, end = window * args.window, (window + 1) * args.window
        if start >= args.seconds:
            label = f"{start}–{end} (in flight at the cancel)"
        else:
            label = f"{start}–{end}"
        rate = int(count) / args.window
        print(f"| {label} | {rate:.0f} | {rate / short_rate:.2f} | {failed} |")
    print("\nclaim query plan at the start of the drain: " + "; ".join(line.strip() for line in plan_start))
    print("\nclaim query plan at the end of the drain: " + "; ".join(line.strip() for line in plan_end))


if __name__ == "__main__":
    main()
