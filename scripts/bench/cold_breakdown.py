#!/usr/bin/env python3
"""Where the time of one cold execution goes, step by step, for both agent delivery paths.

Each path gets a private attune-server (RUST_LOG=attune_controller=debug) whose Docker engine is
reached through a timing proxy (docker_proxy.py: it records when each HTTP request to the
engine was sent and when its answer began). Executions of `bench.echo` run one at a time; for
each, the client's submit time, the execution's database timestamps (microseconds), the
server's debug log lines and the proxied Docker calls are put on one time line, and each step
is the gap between two of those marks. The proxy adds its own forwarding cost to every Docker
call (about 0.1–0.5 ms, more for the 2 MB put_archive body), so the totals here are a little
higher than in cold_latency.py, which is what the ratios come from.

Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from datetime import datetime

from benchlib import BenchServer, DockerApi, load_average, percentile
from docker_proxy import DockerTimingProxy

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+\w+\s+(\S+): (.*)$")


def parse_log(path):
    """(epoch seconds, message with fields) of every log line."""
    lines = []
    with open(path, errors="replace") as log_file:
        for raw in log_file:
            match = LOG_LINE.match(ANSI.sub("", raw.strip()))
            if not match:
                continue
            stamp, _target, message = match.groups()
            seconds, fraction = stamp.split(".")
            epoch = datetime.strptime(seconds + "+0000", "%Y-%m-%dT%H:%M:%S%z").timestamp()
            lines.append((epoch + float("0." + fraction), message))
    return lines


def call_kind(call):
    method, path = call["method"], call["path"].split("?")[0]
    if path.endswith("/containers/create"):
        return "create"
    if path.endswith("/archive") and method == "PUT":
        return "put_archive"
    if path.endswith("/start"):
        return "start"
    if path.endswith("/wait"):
        return "wait"
    if method == "DELETE" and "/containers/" in path:
        return "remove"
    if "/images/" in path and path.endswith("/json"):
        return "image inspect"
    if "/containers/" in path and path.endswith("/json") and "/containers/json" not in path:
        return "container inspect"
    return None


def first(items, predicate):
    return next((item for item in items if predicate(item)), None)


def one_run(server, docker, proxy, action):
    calls_before = len(proxy.snapshot())
    submitted = time.time()
    execution_id = server.submit(action)
    server.wait_terminal(execution_id, 0.002)
    seen = time.time()
    docker.wait_gone(f"attune.controller={server.controller_id}",
                     f"attune.execution={execution_id}")
    requested, scheduled, running, finished = server.step_times(execution_id)
    calls = [call for call in proxy.snapshot()[calls_before:] if call_kind(call)]
    lines = parse_log(server.log_path)
    marker = f"execution_id={execution_id}"

    def log_time(text, extra=marker):
        found = first(lines, lambda line: text in line[1] and extra in line[1])
        return found[0] if found else None

    def call(kind):
        return first(calls, lambda item: call_kind(item) == kind)

    create, archive, start, remove = (call(kind) for kind in
                                      ("create", "put_archive", "start", "remove"))
    registered = log_time("agent registered", f"agent_id=exec-{execution_id}-")
    marks = {
        "submit": submitted,
        "requested": requested,
        "scheduled": scheduled,
        "create sent": create and create["sent"],
        "create answered": create and create["answered"],
        "archive sent": archive and archive["sent"],
        "archive answered": archive and archive["answered"],
        "start sent": start and start["sent"],
        "start answered": start and start["answered"],
        "registered": registered,
        "running": running,
        "finished": finished,
        "client saw it": seen,
        "remove answered": remove and remove["answered"],
    }
    marks["before start"] = marks["archive answered"] or marks["create answered"]
    other_calls = sorted({call_kind(item) for item in calls} - {"create", "put_archive", "start",
                                                                "remove", "wait"})
    return marks, other_calls


def docker_run_marks(proxy, image):
    """The baseline through the proxy: marks of one `docker run --rm --network host`."""
    calls_before = len(proxy.snapshot())
    environment = dict(os.environ, DOCKER_HOST=f"unix://{proxy.listen_path}")
    started = time.time()
    subprocess.run(["docker", "run", "--rm", "--network", "host", "--label",
                    "attune.bench=cold-breakdown", image, "sh", "-c", "echo hi"],
                   check=True, stdout=subprocess.DEVNULL, env=environment)
    ended = time.time()
    calls = proxy.snapshot()[calls_before:]
    create = first(calls, lambda item: call_kind(item) == "create")
    start = first(calls, lambda item: call_kind(item) == "start")
    return {
        "cli started": started,
        "first request": calls[0]["sent"] if calls else None,
        "create sent": create and create["sent"],
        "create answered": create and create["answered"],
        "start sent": start and start["sent"],
        "start answered": start and start["answered"],
        "cli exited": ended,
    }


DOCKER_RUN_STEPS = [
    ("docker CLI process start until its first request", "cli started", "first request"),
    ("version check, until create is sent", "first request", "create sent"),
    ("Docker create", "create sent", "create answered"),
    ("attach and wait set up, until start is sent", "create answered", "start sent"),
    ("Docker start (runc, init)", "start sent", "start answered"),
    ("`sh -c 'echo hi'` runs and exits, --rm removal, CLI exits", "start answered", "cli exited"),
    ("total", "cli started", "cli exited"),
]


STEPS = [
    ("HTTP POST: action lookup, validation, insert", "submit", "requested"),
    ("scheduler wake-up and claim", "requested", "scheduled"),
    ("action + image + delivery plan (pack archive read) until create is sent", "scheduled",
     "create sent"),
    ("Docker create", "create sent", "create answered"),
    ("record placement until put_archive is sent", "create answered", "archive sent"),
    ("Docker put_archive (agent 2 MB + pack; pack only with the volume)", "archive sent", "archive answered"),
    ("declare agent queue, publish job (confirm), cancel check", "before start", "start sent"),
    ("Docker start (runc, init)", "start sent", "start answered"),
    ("agent exec, self-hash, AMQP connect, register reaches the server", "start answered",
     "registered"),
    ("agent takes the job, spawns sh, `running` stored", "registered", "running"),
    ("script runs, report published and stored", "running", "finished"),
    ("client poll sees the terminal status", "finished", "client saw it"),
    ("total submit → terminal (client)", "submit", "client saw it"),
    ("off the path: terminal → container removed", "finished", "remove answered"),
]


VARIANTS = (
    # (name, server (its agent delivery), action)
    ("volume", "volume", "bench.echo"),
    ("put-archive", "put-archive", "bench.echo"),
    ("volume, read-only root", "volume", "bench.echo_readonly"),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image", default="busybox:1.36")
    args = parser.parse_args()
    docker = DockerApi()
    socket_dir = tempfile.mkdtemp(prefix="attune-bench-proxy-")
    proxies, servers = {}, {}
    names = [name for name, _, _ in VARIANTS]
    load_before = load_average()
    try:
        for delivery in ("volume", "put-archive"):
            proxies[delivery] = DockerTimingProxy(
                os.path.join(socket_dir, f"{delivery}.sock")).start()
            servers[delivery] = BenchServer(
                f"breakdown-{delivery}", {"ATTUNE__DOCKER__AGENT_DELIVERY": delivery},
                rust_log="info,attune_server=debug,attune_controller=debug,attune_store=debug",
                docker_host=f"unix://{proxies[delivery].listen_path}").__enter__()
            servers[delivery].register_pack("bench")
        proxies["docker run"] = DockerTimingProxy(
            os.path.join(socket_dir, "docker-run.sock")).start()
        results = {name: [] for name in names}
        baseline = []
        extra_calls = {name: set() for name in names}
        for round_number in range(args.warmup + args.runs):
            for name, delivery, action in VARIANTS:
                marks, others = one_run(servers[delivery], docker, proxies[delivery], action)
                if round_number >= args.warmup:
                    results[name].append(marks)
                    extra_calls[name].update(others)
            marks = docker_run_marks(proxies["docker run"], args.image)
            if round_number >= args.warmup:
                baseline.append(marks)
        log_paths = [server.log_path for server in servers.values()]
        load_after = load_average()
    finally:
        for server in servers.values():
            server.close()
        for proxy in proxies.values():
            proxy.stop()
        os.rmdir(socket_dir)

    print(f"{args.runs} runs per path, one at a time, after {args.warmup} warm-up runs; "
          f"p50 (p90) in ms; 1-minute load average {load_before:.2f} before, {load_after:.2f} "
          "after; server logs: " + ", ".join(log_paths) + "\n")
    print("| step | " + " | ".join(f"`{name}`" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for step, begin, end in STEPS:
        cells = []
        for name in names:
            gaps = [(run[end] - run[begin]) * 1000 for run in results[name]
                    if run.get(begin) is not None and run.get(end) is not None]
            if not gaps:
                cells.append("—")
                continue
            cells.append(f"{statistics.median(gaps):.1f} ({percentile(gaps, 0.9):.1f})")
        print(f"| {step} | " + " | ".join(cells) + " |")
    print(f"\nthe baseline, `docker run --rm --network host {args.image} sh -c 'echo hi'` through "
          "its own proxy, in the same rounds, p50 (p90) in ms:\n")
    print("| step | docker run |")
    print("|---|---:|")
    for step, begin, end in DOCKER_RUN_STEPS:
        gaps = [(run[end] - run[begin]) * 1000 for run in baseline
                if run.get(begin) is not None and run.get(end) is not None]
        print(f"| {step} | {statistics.median(gaps):.1f} ({percentile(gaps, 0.9):.1f}) |")
    for name in names:
        if extra_calls[name]:
            print(f"\nother Docker calls on the `{name}` path: {', '.join(sorted(extra_calls[name]))}")


if __name__ == "__main__":
    main()
