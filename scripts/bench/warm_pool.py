#!/usr/bin/env python3
"""Warm-pool latency and throughput of trivial shell actions (`bench.warm_echo`: `sh echo.sh`
in a busybox container of a pool with 4 ready workers), through a private attune-server,
against bare `sh -c 'echo hi'` spawns on the host measured in the same run.

Latency: submit -> terminal as a client sees it, for several client poll intervals (the API
has no long poll, so a client learns of the end only at its next GET), interleaved run by run
with a bare spawn; plus the server's own requested -> finished time (microsecond timestamps
read from its database), which no poll interval affects.

Throughput: N executions queued at once (inserted with one SQL statement, so the HTTP client
is not what is measured), drained through the pool at its concurrency; rate = N / (the last
finished_at - the moment of the insert). Baselines at the same
concurrency: `xargs -P C` running `sh -c 'echo hi'` (a C loop) and a Python thread pool of
`subprocess.run`.

Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import concurrent.futures
import subprocess
import time

from benchlib import (BenchServer, cpu_by_component, cpu_delta, load_average, log,
                      percentile, spawn_once)

ACTION = "bench.warm_echo"
POOL_MAX = 4  # scripts/bench/packs/bench/actions/warm_echo.yaml


def attune_once(server, poll_seconds):
    started = time.perf_counter()
    execution_id = server.submit(ACTION)
    server.wait_terminal(execution_id, poll_seconds)
    elapsed = time.perf_counter() - started
    requested, scheduled, running, finished = server.step_times(execution_id)
    return {
        "client": elapsed,
        "server": finished - requested,
        "requested→scheduled": scheduled - requested,
        "scheduled→running": running - scheduled,
        "running→finished": finished - running,
    }


def queue_and_drain(server, total, deadline_seconds=600):
    """Inserts `total` requested executions in one statement and waits until all are terminal.
    Returns (executions per second from the insert to the last finish, failures)."""
    first_id = int(server.sql("SELECT coalesce(max(id), 0) FROM executions")[0][0]) + 1
    started = time.time()
    server.sql(
        "INSERT INTO executions (action_ref, action_id, status, parameters) "
        f"SELECT a.ref, a.id, 'requested', '{{}}'::jsonb FROM actions a, "
        f"generate_series(1, {int(total)}) WHERE a.ref = '{ACTION}'")
    deadline = time.monotonic() + deadline_seconds
    while True:
        done = int(server.sql(
            f"SELECT count(*) FROM executions WHERE id >= {first_id} AND finished_at IS NOT NULL")[0][0])
        if done >= total:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} of {total} executions ended within {deadline_seconds} s")
        time.sleep(0.25)  # psql is a process spawn: poll rarely; the rate uses finished_at
    last_finished, failures = server.sql(
        "SELECT extract(epoch FROM max(finished_at)), count(*) FILTER (WHERE status <> 'succeeded') "
        f"FROM executions WHERE id >= {first_id}")[0]
    return total / (float(last_finished) - started), int(failures)


def spawn_loop_xargs(total, concurrency):
    started = time.perf_counter()
    subprocess.run(f"seq {int(total)} | xargs -P {int(concurrency)} -I{{}} sh -c 'echo hi'",
                   shell=True, check=True, stdout=subprocess.DEVNULL)
    return total / (time.perf_counter() - started)


def spawn_loop_python(total, concurrency):
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as workers:
        list(workers.map(lambda _: spawn_once(), range(total)))
    return total / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="latency runs per poll interval")
    parser.add_argument("--polls", default="0,0.001,0.005",
                        help="client poll intervals in seconds, comma separated (0: back to back)")
    parser.add_argument("--throughput-total", type=int, default=2000)
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--database-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a Postgres setting for the server's database only, e.g. "
                             "synchronous_commit=off (a diagnostic: what commits cost)")
    args = parser.parse_args()
    polls = [float(value) for value in args.polls.split(",")]
    database_settings = dict(setting.split("=", 1) for setting in args.database_setting)
    if database_settings:
        print(f"database settings (diagnostic): {database_settings}\n")

    with BenchServer("warm-pool", database_settings=database_settings) as server:
        server.register_pack("bench")
        log("warm-up: 20 runs (fills the pool)")
        for _ in range(20):
            attune_once(server, 0.001)
            spawn_once()
        spawn, attune = [], {poll: [] for poll in polls}
        log(f"latency: {args.runs} interleaved rounds")
        for _ in range(args.runs):
            spawn.append(spawn_once())
            for poll in polls:
                attune[poll].append(attune_once(server, poll))

        log(f"throughput: {args.throughput_repeats} × {args.throughput_total} queued executions, "
            "interleaved with the baselines")
        rates = {"attune": [], "xargs": [], "python": []}
        failures = 0
        cpu = {}
        baseline_busy = {}
        loads = [load_average()]
        for _ in range(args.throughput_repeats):
            before = cpu_by_component()
            rate, failed = queue_and_drain(server, args.throughput_total)
            for name, seconds in cpu_delta(before, cpu_by_component()).items():
                cpu[name] = cpu.get(name, 0.0) + seconds
            rates["attune"].append(rate)
            failures += failed
            for name, loop in (("xargs", spawn_loop_xargs), ("python", spawn_loop_python)):
                before = cpu_by_component()["machine busy"]
                rates[name].append(loop(args.throughput_total, POOL_MAX))
                busy = cpu_by_component()["machine busy"] - before
                baseline_busy[name] = baseline_busy.get(name, 0.0) + busy
        pools = server.pools()
        loads.append(load_average())

    def ms(value):
        return f"{value * 1000:.1f} ms"

    print(f"latency: {args.runs} rounds, each = one bare spawn then one attune run per poll "
          "interval, after 20 warm-up runs\n")
    print("| path | p50 | p90 | p99 | overhead p50 | overhead p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    s50, s90, s99 = (percentile(spawn, q) for q in (0.5, 0.9, 0.99))
    print(f"| bare `sh -c 'echo hi'` spawn on the host | {ms(s50)} | {ms(s90)} | {ms(s99)} | | |")
    for poll in polls:
        for key, name in (("client", f"attune, client submit → terminal, poll {poll * 1000:g} ms"),
                          ("server", "attune, server requested → finished (same runs)")):
            values = [run[key] for run in attune[poll]]
            v50, v90, v99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
            print(f"| {name} | {ms(v50)} | {ms(v90)} | {ms(v99)} | **{ms(v50 - s50)}** | "
                  f"**{ms(v99 - s99)}** |")
    print("\nsteps of the attune runs (all poll intervals together), p50 / p99:\n")
    print("| step | p50 | p99 |")
    print("|---|---:|---:|")
    everything = [run for runs in attune.values() for run in runs]
    for step in ("requested→scheduled", "scheduled→running", "running→finished"):
        values = [run[step] for run in everything]
        print(f"| {step} | {ms(percentile(values, 0.5))} | {ms(percentile(values, 0.99))} |")

    print(f"\nthroughput: {args.throughput_total} trivial actions per repeat, concurrency "
          f"{POOL_MAX} (pool max {POOL_MAX}), {args.throughput_repeats} repeats interleaved; "
          f"{failures} failed\n")
    print("| path | actions/s (median) | all repeats |")
    print("|---|---:|---|")
    for key, name in (("attune", "attune warm pool (queued in one INSERT, drained)"),
                      ("xargs", f"bare spawn loop `xargs -P {POOL_MAX} sh -c 'echo hi'`"),
                      ("python", f"bare spawn loop, Python threads × {POOL_MAX}")):
        print(f"| {name} | {percentile(rates[key], 0.5):.0f} | "
              + ", ".join(f"{rate:.0f}" for rate in rates[key]) + " |")
    attune_rate = percentile(rates["attune"], 0.5)
    print(f"| **ratio attune / xargs loop** | **{attune_rate / percentile(rates['xargs'], 0.5):.3f}** | |")
    print(f"| ratio attune / Python loop | {attune_rate / percentile(rates['python'], 0.5):.3f} | |")
    executions = args.throughput_total * args.throughput_repeats
    print(f"\nCPU time per attune execution during the drains (all {executions}), by component; "
          "the machine has 2 cores, other people's builds are in the machine total:\n")
    print("| component | CPU ms per execution |")
    print("|---|---:|")
    for name, seconds in cpu.items():
        print(f"| {name} | {seconds / executions * 1000:.2f} |")
    for name, seconds in baseline_busy.items():
        print(f"| machine busy per action of the {name} spawn loop (baseline) | "
              f"{seconds / executions * 1000:.2f} |")
    print(f"\n1-minute load average before / after the throughput part: "
          f"{loads[0]:.2f} / {loads[1]:.2f}")
    print("\npools at the end: " + "; ".join(
        f"{pool['key']}: ready {pool['ready']}, busy {pool['busy']}, created {pool['total_created']}, "
        f"retired {pool['retired']}" for pool in pools))


if __name__ == "__main__":
    main()
