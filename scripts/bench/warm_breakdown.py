#!/usr/bin/env python3
"""Where the time of one warm-pool execution goes, step by step.

A private attune-server with RUST_LOG=attune_controller=debug runs `bench.warm_echo` (a pool of
4 ready busybox workers) one execution at a time. For each, the client's submit and
terminal-seen times, the execution's database timestamps (each is the start of the statement
that wrote it, microseconds) and the server's debug log lines (each written after the step
returned) are put on one time line. Debug logging costs a little, so the total is a bit above
warm_pool.py's, which is where the headline numbers come from. Run with
`--database-setting synchronous_commit=off` to see what the commits' WAL flushes cost.

Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import statistics
import time

from benchlib import BenchServer, load_average, percentile
from cold_breakdown import parse_log

ACTION = "bench.warm_echo"

STEPS = [
    ("HTTP POST until the insert starts (action lookup, validation)", "submit", "requested"),
    ("insert commits, API logs it", "requested", "requested logged"),
    ("scheduler wakes, claim statement starts", "requested logged", "scheduled"),
    ("claim commits, scheduler logs it", "scheduled", "scheduled logged"),
    ("action lookup, image (cached), cancel check, warm container claimed", "scheduled logged",
     "claimed"),
    ("record placement (commit), publish job (confirm), agent takes it, spawns sh, reports "
     "`running`, consumer starts storing it", "claimed", "running"),
    ("`running` commits", "running", "running logged"),
    ("log chunk stored, report consumed, terminal statement starts", "running logged",
     "finished"),
    ("terminal status commits", "finished", "finished logged"),
    ("client's next poll sees it", "finished logged", "client saw it"),
    ("total submit → terminal (client)", "submit", "client saw it"),
]


def one_run(server):
    submitted = time.time()
    execution_id = server.submit(ACTION)
    server.wait_terminal(execution_id, 0)
    seen = time.time()
    requested, scheduled, running, finished = server.step_times(execution_id)
    return execution_id, {
        "submit": submitted,
        "requested": requested,
        "scheduled": scheduled,
        "running": running,
        "finished": finished,
        "client saw it": seen,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--database-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a Postgres setting for the server's database only, e.g. "
                             "synchronous_commit=off")
    args = parser.parse_args()
    database_settings = dict(setting.split("=", 1) for setting in args.database_setting)
    load_before = load_average()
    runs = {}
    with BenchServer("warm-breakdown", rust_log="info,attune_server=debug,attune_controller=debug,attune_store=debug",
                     database_settings=database_settings) as server:
        server.register_pack("bench")
        for _ in range(20):
            one_run(server)
        for _ in range(args.runs):
            execution_id, marks = one_run(server)
            runs[execution_id] = marks
        lines = parse_log(server.log_path)
    load_after = load_average()
    messages = {
        "requested logged": "execution requested",
        "scheduled logged": "execution scheduled",
        "claimed": "claimed warm container",
        "running logged": "execution running",
        "finished logged": "execution finished",
    }
    for stamp, message in lines:
        for mark, text in messages.items():
            if message.startswith(text):
                for field in message.split():
                    if field.startswith("execution_id="):
                        execution_id = int(field.split("=", 1)[1])
                        if execution_id in runs:
                            runs[execution_id].setdefault(mark, stamp)
    settings_note = f"; database settings {database_settings}" if database_settings else ""
    print(f"{args.runs} warm executions one at a time, client polls back to back{settings_note}; "
          f"1-minute load average {load_before:.2f} before, {load_after:.2f} after\n")
    print("| step | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    for name, begin, end in STEPS:
        gaps = [(marks[end] - marks[begin]) * 1000 for marks in runs.values()
                if begin in marks and end in marks]
        if len(gaps) < len(runs):
            name += f" ({len(runs) - len(gaps)} runs without both marks)"
        print(f"| {name} | {statistics.median(gaps):.2f} ms | {percentile(gaps, 0.9):.2f} ms | "
              f"{percentile(gaps, 0.99):.2f} ms |")


if __name__ == "__main__":
    main()
