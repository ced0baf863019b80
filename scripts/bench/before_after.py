#!/usr/bin/env python3
"""Before/after: cold and warm latency of two builds of attune-server (e.g. an older commit in a
git worktree and a newer one), side by side in ONE interleaved run, each against the baseline
measured in the same rounds.

Two private servers run at the same time (own port, database, controller id and events queue),
each with its own release server, CLI and agent (`--before-root`, `--after-root`: checkouts with
target/release/{attune-server,attune} and agent-dist/attune-agent-x86_64 built), default
settings otherwise (the default agent delivery). The same bench pack (this tree's
scripts/bench/packs/bench) is registered on both.

- cold: per round, in a rotating order, `docker run --rm --network host IMAGE sh -c 'echo hi'`,
  `bench.echo` (a fresh container per execution) through the before server and through the
  after server; submit -> terminal as the client sees it (poll `--poll`). Before each attune
  run the previous run's container must be gone (as in cold_latency.py).
- warm: per round, in a rotating order, a bare host `sh -c 'echo hi'` spawn and
  `bench.warm_echo` (pool of 4 ready busybox workers) through each server; client submit ->
  terminal (poll `--warm-poll`, 0 = back to back) and the server's own requested -> finished.

The after/before ratio of each percentile comes with a 90 % bootstrap interval (rounds resampled
with replacement, the pairing of a round kept), a measure of how much of a difference is noise.

Prints Markdown tables. Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import random
import statistics

from benchlib import (BenchServer, Build, DockerApi, docker_run_once, load_average, log,
                      percentile, remove_containers, spawn_once)
from cold_latency import attune_once as cold_once
from warm_pool import attune_once as warm_once

BASELINE_LABEL = "attune.bench=before-after"
BOOTSTRAP_SAMPLES = 2000


def ms(value, digits=0):
    return f"{value * 1000:.{digits}f} ms"


def ratio_interval(before, after, fraction, rng):
    """after/before of one percentile, and its 5th..95th bootstrap interval over paired rounds."""
    point = percentile(after, fraction) / percentile(before, fraction)
    count = len(before)
    samples = []
    for _ in range(BOOTSTRAP_SAMPLES):
        indices = [rng.randrange(count) for _ in range(count)]
        samples.append(percentile([after[i] for i in indices], fraction)
                       / percentile([before[i] for i in indices], fraction))
    return point, percentile(samples, 0.05), percentile(samples, 0.95)


def rotated(items, round_number):
    shift = round_number % len(items)
    return items[shift:] + items[:shift]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-root", required=True, help="checkout with the BEFORE build")
    parser.add_argument("--after-root", required=True, help="checkout with the AFTER build")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--after-label", default="after")
    parser.add_argument("--before-description", default="", help="e.g. the commit's subject")
    parser.add_argument("--after-description", default="")
    parser.add_argument("--image", default="busybox:1.36")
    parser.add_argument("--runs", type=int, default=80, help="cold rounds")
    parser.add_argument("--warmup", type=int, default=3, help="cold warm-up rounds")
    parser.add_argument("--poll", type=float, default=0.002, help="cold client poll, seconds")
    parser.add_argument("--warm-runs", type=int, default=600, help="warm rounds")
    parser.add_argument("--warm-warmup", type=int, default=20, help="warm warm-up rounds")
    parser.add_argument("--warm-poll", type=float, default=0.0,
                        help="warm client poll, seconds (0: back to back)")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    docker = DockerApi()
    builds = {"before": Build(args.before_root), "after": Build(args.after_root)}
    labels = {"before": args.before_label, "after": args.after_label}
    loads = {"start": load_average()}
    cold = {"baseline": [], "before": [], "after": []}
    warm = {"baseline": [], "before": [], "after": []}
    try:
        with BenchServer("before", build=builds["before"]) as before, \
                BenchServer("after", build=builds["after"]) as after:
            servers = {"before": before, "after": after}
            for server in servers.values():
                server.register_pack("bench")

            def cold_path(path):
                if path == "baseline":
                    return docker_run_once(args.image, BASELINE_LABEL)
                return cold_once(servers[path], docker, "bench.echo", args.poll)

            def warm_path(path):
                if path == "baseline":
                    return spawn_once()
                return warm_once(servers[path], args.warm_poll)

            paths = ["baseline", "before", "after"]
            log(f"cold warm-up: {args.warmup} rounds")
            for round_number in range(args.warmup):
                for path in rotated(paths, round_number):
                    cold_path(path)
            loads["cold start"] = load_average()
            log(f"cold: {args.runs} interleaved rounds")
            for round_number in range(args.runs):
                for path in rotated(paths, round_number):
                    cold[path].append(cold_path(path))
                if (round_number + 1) % 10 == 0:
                    log(f"cold {round_number + 1}/{args.runs}")
            loads["cold end"] = load_average()

            log(f"warm warm-up: {args.warm_warmup} rounds (fills the pools)")
            for round_number in range(args.warm_warmup):
                for path in rotated(paths, round_number):
                    warm_path(path)
            loads["warm start"] = load_average()
            log(f"warm: {args.warm_runs} interleaved rounds")
            for round_number in range(args.warm_runs):
                for path in rotated(paths, round_number):
                    warm[path].append(warm_path(path))
                if (round_number + 1) % 100 == 0:
                    log(f"warm {round_number + 1}/{args.warm_runs}")
            loads["warm end"] = load_average()
            pools = {name: server.pools() for name, server in servers.items()}
    finally:
        remove_containers(f"label={BASELINE_LABEL}")

    print(f"before: {args.before_description or labels['before']} "
          f"(`{builds['before'].server_binary}`)  \n"
          f"after: {args.after_description or labels['after']} "
          f"(`{builds['after'].server_binary}`)\n")
    print(f"1-minute load average: start {loads['start']:.2f}, cold {loads['cold start']:.2f} → "
          f"{loads['cold end']:.2f}, warm {loads['warm start']:.2f} → {loads['warm end']:.2f}\n")

    # Cold.
    print(f"cold: {args.runs} rounds after {args.warmup} warm-up rounds, each round = one run of "
          f"every path in a rotating order; client poll {args.poll * 1000:g} ms\n")
    print("| path | p50 | p90 | mean | ÷ baseline p50 | ÷ baseline p90 |")
    print("|---|---:|---:|---:|---:|---:|")
    base50, base90 = percentile(cold["baseline"], 0.5), percentile(cold["baseline"], 0.9)
    print(f"| `docker run --rm --network host {args.image} sh -c 'echo hi'` | {ms(base50)} | "
          f"{ms(base90)} | {ms(statistics.mean(cold['baseline']))} | 1.00 | 1.00 |")
    for key in ("total", "removed"):
        what = "submit → terminal" if key == "total" else "submit → container removed"
        for path in ("before", "after"):
            values = [run[key] for run in cold[path]]
            strong = "**" if key == "total" else ""
            print(f"| {path} ({labels[path]}) `bench.echo`, {what} | {ms(percentile(values, 0.5))} | "
                  f"{ms(percentile(values, 0.9))} | {ms(statistics.mean(values))} | "
                  f"{strong}{percentile(values, 0.5) / base50:.2f}{strong} | "
                  f"{strong}{percentile(values, 0.9) / base90:.2f}{strong} |")
    print("\ncold, after ÷ before (90 % bootstrap interval):\n")
    print("| measure | p50 | p90 |")
    print("|---|---:|---:|")
    for key, what in (("total", "submit → terminal"), ("removed", "submit → container removed")):
        cells = []
        for fraction in (0.5, 0.9):
            point, low, high = ratio_interval([run[key] for run in cold["before"]],
                                              [run[key] for run in cold["after"]], fraction, rng)
            cells.append(f"**{point:.2f}** ({low:.2f}–{high:.2f})")
        print(f"| {what} | " + " | ".join(cells) + " |")
    print("\ncold steps (execution timestamps from each server's database), p50 / p90:\n")
    print("| step | before | after |")
    print("|---|---:|---:|")
    for step in ("requested→scheduled", "scheduled→running", "running→finished",
                 "HTTP + poll (total − requested→finished)"):
        cells = [f"{ms(percentile([run[step] for run in cold[path]], 0.5), 1)} / "
                 f"{ms(percentile([run[step] for run in cold[path]], 0.9), 1)}"
                 for path in ("before", "after")]
        print(f"| {step} | " + " | ".join(cells) + " |")

    # Warm.
    print(f"\nwarm: {args.warm_runs} rounds after {args.warm_warmup} warm-up rounds, each round = "
          f"one run of every path in a rotating order; client poll "
          f"{args.warm_poll * 1000:g} ms (0 = back to back)\n")
    print("| path | p50 | p90 | p99 | overhead p50 | overhead p99 | ÷ baseline p50 | ÷ baseline p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    s50, s90, s99 = (percentile(warm["baseline"], q) for q in (0.5, 0.9, 0.99))
    print(f"| bare `sh -c 'echo hi'` spawn on the host | {ms(s50, 1)} | {ms(s90, 1)} | "
          f"{ms(s99, 1)} | | | 1.00 | 1.00 |")
    for key, what in (("client", "client submit → terminal"),
                      ("server", "server requested → finished")):
        for path in ("before", "after"):
            values = [run[key] for run in warm[path]]
            v50, v90, v99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
            print(f"| {path} ({labels[path]}) `bench.warm_echo`, {what} | {ms(v50, 1)} | "
                  f"{ms(v90, 1)} | {ms(v99, 1)} | **{ms(v50 - s50, 1)}** | **{ms(v99 - s99, 1)}** | "
                  f"{v50 / s50:.1f} | {v99 / s99:.1f} |")
    print("\nwarm, after ÷ before (90 % bootstrap interval):\n")
    print("| measure | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    for key, what in (("client", "client submit → terminal"),
                      ("server", "server requested → finished")):
        cells = []
        for fraction in (0.5, 0.9, 0.99):
            point, low, high = ratio_interval([run[key] for run in warm["before"]],
                                              [run[key] for run in warm["after"]], fraction, rng)
            cells.append(f"**{point:.2f}** ({low:.2f}–{high:.2f})")
        print(f"| {what} | " + " | ".join(cells) + " |")
    print("\nwarm steps, p50 / p99:\n")
    print("| step | before | after |")
    print("|---|---:|---:|")
    for step in ("requested→scheduled", "scheduled→running", "running→finished"):
        cells = [f"{ms(percentile([run[step] for run in warm[path]], 0.5), 2)} / "
                 f"{ms(percentile([run[step] for run in warm[path]], 0.99), 2)}"
                 for path in ("before", "after")]
        print(f"| {step} | " + " | ".join(cells) + " |")
    print("\npools at the end: " + "; ".join(
        f"{name}: " + ", ".join(
            f"{pool.get('key')} ready {pool.get('ready')} busy {pool.get('busy')} created "
            f"{pool.get('total_created')}" for pool in server_pools)
        for name, server_pools in pools.items()))


if __name__ == "__main__":
    main()
