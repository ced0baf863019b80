#!/usr/bin/env python3
"""Cold per-execution latency: submit -> terminal status of `bench.echo` (a fresh busybox
container per execution) through two private attune-servers, one per agent delivery path
(`volume`, `put-archive`), against `docker run --rm --network host IMAGE sh -c 'echo hi'`, all
interleaved run by run in one process. A third attune path runs `bench.echo_readonly` on the
volume server: with a read-only root filesystem the pack's files come from a volume too, so
nothing at all is copied with put_archive (what the pack-files step costs).

Per attune run it also records the execution's own timestamps (microseconds, read from the
server's database) and the moment its container was gone (the controller removes it after the
terminal status). Before each run the previous run's container must be gone, so no removal
overlaps a measured run.

Prints Markdown tables. Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import statistics
import time

from benchlib import (BenchServer, DockerApi, docker_run_once, load_average, log,
                      percentile)


def attune_once(server, docker, action, poll_seconds):
    started = time.perf_counter()
    execution_id = server.submit(action)
    server.wait_terminal(execution_id, poll_seconds)
    terminal = time.perf_counter()
    gone = docker.wait_gone(f"attune.controller={server.controller_id}",
                            f"attune.execution={execution_id}")
    requested, scheduled, running, finished = server.step_times(execution_id)
    return {
        "total": terminal - started,
        "removed": gone - started,
        "requested→scheduled": scheduled - requested,
        "scheduled→running": running - scheduled,
        "running→finished": finished - running,
        "HTTP + poll (total − requested→finished)": (terminal - started) - (finished - requested),
    }


def ms(value):
    return f"{value * 1000:.0f} ms"


def ms1(value):
    return f"{value * 1000:.1f} ms"


VARIANTS = (
    # (name, server, action)
    ("volume", "volume", "bench.echo"),
    ("put-archive", "put-archive", "bench.echo"),
    ("volume, read-only root", "volume", "bench.echo_readonly"),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="busybox:1.36")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.002,
                        help="client poll interval, seconds (adds about half of it on average)")
    args = parser.parse_args()

    docker = DockerApi()
    names = [name for name, _, _ in VARIANTS]
    load_before = load_average()
    with BenchServer("cold-volume", {"ATTUNE__DOCKER__AGENT_DELIVERY": "volume"}) as volume, \
            BenchServer("cold-put-archive",
                        {"ATTUNE__DOCKER__AGENT_DELIVERY": "put-archive"}) as put_archive:
        servers = {"volume": volume, "put-archive": put_archive}
        for server in servers.values():
            server.register_pack("bench")
        log(f"warm-up: {args.warmup} rounds")
        for _ in range(args.warmup):
            for _, server, action in VARIANTS:
                attune_once(servers[server], docker, action, args.poll)
            docker_run_once(args.image, "attune.bench=cold-latency")
        results = {name: [] for name in names}
        baseline = []
        log(f"measuring: {args.runs} interleaved rounds")
        for round_number in range(args.runs):
            for name, server, action in VARIANTS:
                results[name].append(attune_once(servers[server], docker, action, args.poll))
            baseline.append(docker_run_once(args.image, "attune.bench=cold-latency"))
            if (round_number + 1) % 10 == 0:
                log(f"{round_number + 1}/{args.runs} rounds")

    load_after = load_average()

    def column(name, key):
        return [run[key] for run in results[name]]

    print(f"runs: {args.runs} rounds, each round = one run of every path in turn, after "
          f"{args.warmup} warm-up rounds; client poll interval {args.poll * 1000:.0f} ms; "
          f"1-minute load average {load_before:.2f} before, {load_after:.2f} after\n")
    print("| path | p50 | p90 | mean | ratio p50 | ratio p90 |")
    print("|---|---:|---:|---:|---:|---:|")
    base50, base90 = percentile(baseline, 0.5), percentile(baseline, 0.9)
    print(f"| `docker run --rm --network host {args.image} sh -c 'echo hi'` | {ms(base50)} | "
          f"{ms(base90)} | {ms(statistics.mean(baseline))} | 1.00 | 1.00 |")
    for name in names:
        totals = column(name, "total")
        print(f"| attune `{name}`, submit → terminal | "
              f"{ms(percentile(totals, 0.5))} | {ms(percentile(totals, 0.9))} | "
              f"{ms(statistics.mean(totals))} | **{percentile(totals, 0.5) / base50:.2f}** | "
              f"**{percentile(totals, 0.9) / base90:.2f}** |")
    for name in names:
        removed = column(name, "removed")
        print(f"| attune `{name}`, submit → container removed | {ms(percentile(removed, 0.5))} | "
              f"{ms(percentile(removed, 0.9))} | {ms(statistics.mean(removed))} | "
              f"{percentile(removed, 0.5) / base50:.2f} | {percentile(removed, 0.9) / base90:.2f} |")

    print("\nsteps of the attune runs (execution timestamps from the database), p50 / p90:\n")
    steps = ("requested→scheduled", "scheduled→running", "running→finished",
             "HTTP + poll (total − requested→finished)")
    print("| step | " + " | ".join(f"`{name}`" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for step in steps:
        cells = [f"{ms1(percentile(column(name, step), 0.5))} / "
                 f"{ms1(percentile(column(name, step), 0.9))}" for name in names]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
