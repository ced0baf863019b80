#!/usr/bin/env python3
"""Long-lived workers against the warm pool, in one run: latency of a trivial shell action
routed to a worker (`bench.worker_echo`, no image) and of the same action in a warm pool
container (`bench.warm_echo`), each minus a bare `sh -c 'echo hi'` spawn on the host measured in
the same rounds; then throughput of each drained at the same concurrency (one worker of
concurrency 4; a pool of 4).

The worker is the real static agent as the entrypoint of busybox:1.36 (`docker run` with host
networking, Attune's worker variables, a `worker` token made through the API), as an operator
would start one. Only talks to 127.0.0.1 and the local Docker socket; the worker container,
its broker account and job queue are removed at the end.
"""
import argparse
import subprocess
import time
import uuid

from benchlib import (BenchServer, load_average, log, management, percentile, request,
                      spawn_once)
from warm_pool import attune_once as pool_once

WORKER_ACTION = "bench.worker_echo"
POOL_ACTION = "bench.warm_echo"
CONCURRENCY = 4


def run_once(server, action, poll_seconds=0):
    started = time.perf_counter()
    execution_id = server.submit(action)
    execution = server.wait_terminal(execution_id, poll_seconds)
    elapsed = time.perf_counter() - started
    requested, scheduled, running, finished = server.step_times(execution_id)
    return execution, {
        "client": elapsed,
        "server": finished - requested,
        "requested→scheduled": scheduled - requested,
        "scheduled→running": running - scheduled,
        "running→finished": finished - running,
    }


def drain(server, action, total, deadline_seconds=900):
    """Inserts `total` requested executions of `action` in one statement; returns executions
    per second from the insert to the last finish, and how many did not succeed."""
    first_id = int(server.sql("SELECT coalesce(max(id), 0) FROM executions")[0][0]) + 1
    started = time.time()
    server.sql(
        "INSERT INTO executions (action_ref, action_id, status, parameters) "
        f"SELECT a.ref, a.id, 'requested', '{{}}'::jsonb FROM actions a, "
        f"generate_series(1, {int(total)}) WHERE a.ref = '{action}'")
    deadline = time.monotonic() + deadline_seconds
    while True:
        done = int(server.sql(
            f"SELECT count(*) FROM executions WHERE id >= {first_id} "
            "AND finished_at IS NOT NULL")[0][0])
        if done >= total:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} of {total} {action} ended within {deadline_seconds} s")
        time.sleep(0.25)
    last_finished, failures = server.sql(
        "SELECT extract(epoch FROM max(finished_at)), count(*) FILTER (WHERE status <> 'succeeded') "
        f"FROM executions WHERE id >= {first_id}")[0]
    return total / (float(last_finished) - started), int(failures)


class Worker:
    """A busybox worker container running the server's agent build."""

    def __init__(self, server, token):
        self.name = f"bench-worker-{uuid.uuid4().hex[:8]}"
        self.server = server
        self.token = token
        self.container = None

    def __enter__(self):
        self.container = subprocess.run(
            ["docker", "run", "-d", "--network", "host", "--label", "attune.bench=true",
             "--name", self.name,
             "-v", f"{self.server.build.agent_binary}:/opt/attune/agent/attune-agent:ro",
             "--entrypoint", "/opt/attune/agent/attune-agent",
             "-e", f"ATTUNE_WORKER_NAME={self.name}", "-e", f"ATTUNE_API_URL={self.server.api}",
             "-e", f"ATTUNE_WORKER_TOKEN={self.token}",
             "-e", f"ATTUNE_WORKER_CONCURRENCY={CONCURRENCY}", "busybox:1.36"],
            check=True, capture_output=True, text=True).stdout.strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = request("GET", f"{self.server.api}/api/v1/workers",
                              token=self.server.token)["items"]
            online = [worker for worker in workers
                      if worker["name"] == self.name and worker["status"] == "online"]
            if online:
                self.agent_id = online[0]["agent_id"]
                log(f"worker {self.name} online as {self.agent_id}")
                return self
            time.sleep(0.1)
        logs = subprocess.run(["docker", "logs", "--tail", "30", self.container],
                              capture_output=True, text=True)
        self.__exit__()
        raise SystemExit(f"worker {self.name} never came online: {logs.stdout}{logs.stderr}")

    def __exit__(self, *exc):
        if self.container:
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        agent_id = getattr(self, "agent_id", None)
        if agent_id:
            management("DELETE", f"/api/users/attune-agent.workers.{agent_id}")
            subprocess.run(["rabbitmqctl", "delete_queue", f"attune.agent.{agent_id}.jobs"],
                           capture_output=True)
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="latency rounds")
    parser.add_argument("--throughput-total", type=int, default=1000)
    parser.add_argument("--throughput-repeats", type=int, default=2)
    args = parser.parse_args()

    settings = {"ATTUNE__WORKERS__HEARTBEAT_SECONDS": "1"}
    with BenchServer("workers", settings=settings) as server:
        server.register_pack("bench")
        token = request("POST", f"{server.api}/api/v1/tokens",
                        {"name": "bench-worker", "role": "worker"}, token=server.token)["token"]
        with Worker(server, token) as worker:
            log("warm-up: 20 rounds (fills the pool, warms the worker's pack cache)")
            for _ in range(20):
                run_once(server, WORKER_ACTION)
                pool_once(server, 0)
            spawn, routed, pooled = [], [], []
            log(f"latency: {args.runs} interleaved rounds")
            for _ in range(args.runs):
                spawn.append(spawn_once())
                execution, times = run_once(server, WORKER_ACTION)
                if execution.get("worker") != worker.name:
                    raise SystemExit(f"execution {execution['id']} ran on {execution.get('worker')}")
                routed.append(times)
                pooled.append(pool_once(server, 0))
            log(f"throughput: {args.throughput_repeats} × {args.throughput_total} each, interleaved")
            rates = {"worker": [], "pool": []}
            failures = 0
            loads = [load_average()]
            for _ in range(args.throughput_repeats):
                for key, action in (("worker", WORKER_ACTION), ("pool", POOL_ACTION)):
                    rate, failed = drain(server, action, args.throughput_total)
                    rates[key].append(rate)
                    failures += failed
            loads.append(load_average())

    def ms(value):
        return f"{value * 1000:.1f} ms"

    print(f"latency: {args.runs} rounds after 20 warm-up rounds, each = one bare spawn, one "
          "routed worker run, one warm pool run; client polls back to back\n")
    print("| path | p50 | p90 | p99 | − bare spawn p50 | − bare spawn p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    s50, s90, s99 = (percentile(spawn, q) for q in (0.5, 0.9, 0.99))
    print(f"| bare `sh -c 'echo hi'` spawn on the host | {ms(s50)} | {ms(s90)} | {ms(s99)} | | |")
    for runs, name in ((routed, f"`{WORKER_ACTION}` routed to a worker"),
                       (pooled, f"`{POOL_ACTION}` in a warm pool container")):
        for key, what in (("client", "client submit → terminal"),
                          ("server", "server requested → finished")):
            values = [run[key] for run in runs]
            v50, v90, v99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
            print(f"| {name}, {what} | {ms(v50)} | {ms(v90)} | {ms(v99)} | **{ms(v50 - s50)}** | "
                  f"**{ms(v99 - s99)}** |")
    print("\nsteps, p50 / p99:\n")
    print("| step | worker | warm pool |")
    print("|---|---:|---:|")
    for step in ("requested→scheduled", "scheduled→running", "running→finished"):
        cells = []
        for runs in (routed, pooled):
            values = [run[step] for run in runs]
            cells.append(f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.99))}")
        print(f"| {step} | {cells[0]} | {cells[1]} |")
    worker_rate = percentile(rates["worker"], 0.5)
    pool_rate = percentile(rates["pool"], 0.5)
    print(f"\nthroughput: {args.throughput_total} per repeat, {args.throughput_repeats} repeats "
          f"interleaved, concurrency {CONCURRENCY} each; {failures} failed\n")
    print("| path | actions/s (median) | all repeats |")
    print("|---|---:|---|")
    print(f"| one worker, concurrency {CONCURRENCY} | {worker_rate:.0f} | "
          + ", ".join(f"{rate:.0f}" for rate in rates["worker"]) + " |")
    print(f"| warm pool of {CONCURRENCY} | {pool_rate:.0f} | "
          + ", ".join(f"{rate:.0f}" for rate in rates["pool"]) + " |")
    print(f"| **worker ÷ warm pool** | **{worker_rate / pool_rate:.2f}** | |")
    print(f"\n1-minute load average around the throughput part: {loads[0]:.2f} / {loads[1]:.2f}")


if __name__ == "__main__":
    main()
