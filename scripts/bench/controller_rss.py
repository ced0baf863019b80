#!/usr/bin/env python3
"""Controller memory with warm pools: the resident memory of a private release attune-server
with 0, 100 and 500 idle pooled busybox containers (packs under scripts/bench/packs:
bench_pool100, and bench_pool250a + bench_pool250b since a pool holds at most 256), one fresh
server per count. Each server first runs one per-execution `bench.echo` so every code path
that a pool-less server uses is warm; then one execution of each pool pack's action creates
its pool, whose maintenance fills it to `min_idle`. Once every container is ready and the
server has been quiet for a while, VmRSS and RssAnon are read from /proc/<pid>/status (median
of 10 readings, one a second). The server is then stopped with SIGTERM, which retires every
idle container, and the time that takes is reported.

The baseline is the same server with no pool (count 0), measured in the same run.
Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import statistics
import time

from benchlib import BenchServer, DockerApi, log

POOL_PACKS = {
    0: [],
    100: ["bench_pool100"],
    500: ["bench_pool250a", "bench_pool250b"],
}


def measure(count, fill_deadline_seconds, settings):
    packs = POOL_PACKS[count]
    docker = DockerApi()
    with BenchServer(f"rss-{count}", settings) as server:
        server.register_pack("bench")
        for pack in packs:
            server.register_pack(pack)
        server.wait_terminal(server.submit("bench.echo"), 0.01)
        fill_started = time.monotonic()
        for pack in packs:
            server.wait_terminal(server.submit(f"{pack}.idle"), 0.01, deadline_seconds=300)
        deadline = time.monotonic() + fill_deadline_seconds
        last_report = 0.0
        while True:
            ready = sum(pool["ready"] for pool in server.pools())
            if ready >= count:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {ready} of {count} warm containers ready after "
                                 f"{fill_deadline_seconds} s; log {server.log_path}")
            if time.monotonic() - last_report > 15:
                log(f"{ready}/{count} warm containers ready")
                last_report = time.monotonic()
            time.sleep(0.5)
        fill_seconds = time.monotonic() - fill_started
        containers = len(docker.container_ids(f"attune.controller={server.controller_id}"))
        log(f"{count} ready in {fill_seconds:.0f} s ({containers} containers of this server); "
            "settling, then reading /proc")
        time.sleep(10)
        readings = []
        for _ in range(10):
            readings.append((server.rss_kib("VmRSS"), server.rss_kib("RssAnon")))
            time.sleep(1)
        high_water = server.rss_kib("VmHWM")
        threads = server.rss_kib("Threads")
        start_failures = sum(1 for line in open(server.log_path, errors="replace")
                             if "start warm container" in line)
        stop_started = time.monotonic()
        server.stop()
        stop_seconds = time.monotonic() - stop_started
        left = len(docker.container_ids(f"attune.controller={server.controller_id}"))
    return {
        "count": count,
        "vm_rss": statistics.median(reading[0] for reading in readings),
        "rss_anon": statistics.median(reading[1] for reading in readings),
        "high_water": high_water,
        "fill_seconds": fill_seconds if count else 0.0,
        "containers": containers,
        "start_failures": start_failures,
        "stop_seconds": stop_seconds,
        "left_after_stop": left,
        "threads": threads,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="0,100,500")
    parser.add_argument("--fill-deadline", type=int, default=1200,
                        help="seconds allowed to get every pool container ready")
    parser.add_argument("--agent-start-timeout", type=int, default=None,
                        help="executor.agent_start_timeout_seconds for the servers")
    args = parser.parse_args()
    settings = {}
    if args.agent_start_timeout:
        settings["ATTUNE__EXECUTOR__AGENT_START_TIMEOUT_SECONDS"] = str(args.agent_start_timeout)
    counts = [int(value) for value in args.counts.split(",")]
    for count in counts:
        if count not in POOL_PACKS:
            raise SystemExit(f"count {count} has no packs (known: {sorted(POOL_PACKS)})")
    results = []
    for count in counts:
        log(f"server with {count} idle pooled containers")
        results.append(measure(count, args.fill_deadline, settings))

    baseline = next((result for result in results if result["count"] == 0), None)
    print("| idle pooled containers | VmRSS | RssAnon | VmHWM | growth per 1000 containers "
          "(VmRSS) | threads | time to fill | stop (retire all) | left after stop |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        growth = ""
        if baseline is not None and result["count"] > 0:
            per_thousand = (result["vm_rss"] - baseline["vm_rss"]) / result["count"] * 1000 / 1024
            growth = f"**{per_thousand:.1f} MiB**"
        fill = f"{result['fill_seconds']:.0f} s" if result["count"] else ""
        if result["start_failures"]:
            fill += f" ({result['start_failures']} failed starts retried)"
        print(f"| {result['count']} | {result['vm_rss'] / 1024:.1f} MiB | "
              f"{result['rss_anon'] / 1024:.1f} MiB | {result['high_water'] / 1024:.1f} MiB | "
              f"{growth} | {result['threads']} | {fill} | {result['stop_seconds']:.0f} s | {result['left_after_stop']} |")


if __name__ == "__main__":
    main()
