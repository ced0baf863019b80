#!/usr/bin/env python3
"""Controller memory with warm pools: the resident memory of a private release attune-server
with 0, 100 and 500 idle pooled busybox containers (packs under scripts/bench/packs:
bench_pool100, and bench_pool250a + bench_pool250b since a pool holds at most 256), one fresh
server per count. Each server first runs one per-execution `bench.echo` so every code path
that a pool-less server uses is warm; then one execution of each pool pack's action creates
its pool, whose maintenance fills it to `min_idle`. Once every container is ready and the
server has been quiet for a while, VmRSS and RssAnon are read from /proc/<pid>/status (median
of 10 readings, one a second). As a diagnostic (when gdb is installed), glibc's
`malloc_trim(0)` is then called in the server through gdb and RssAnon read again: what it gives
back was free memory the allocator kept after the burst of container starts, not live state.
The server is then stopped with SIGTERM, which retires every idle container, and the time that
takes is reported.

The baseline is the same server with no pool (count 0), measured in the same run.

With --heaptrack the servers run under heaptrack instead (slower; RSS not comparable), are
killed (SIGKILL) once their pools are ready and quiet, and the table shows the heap still
allocated at that moment (heaptrack's "leaked" total, i.e. live state) and the peak heap, which
tells live per-container state apart from what the allocator merely kept. Their containers are
then removed by label.
Only talks to 127.0.0.1 and the local Docker socket.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from benchlib import BenchServer, DockerApi, log

POOL_PACKS = {
    0: [],
    100: ["bench_pool100"],
    500: ["bench_pool250a", "bench_pool250b"],
}


def measure(count, fill_deadline_seconds, settings, trim):
    docker = DockerApi()
    with BenchServer(f"rss-{count}", settings) as server:
        fill_seconds = fill_pools(server, docker, count, fill_deadline_seconds)
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
        sockets = open_sockets(server.process.pid)
        trimmed = None
        if trim and shutil.which("gdb"):
            subprocess.run(["gdb", "-p", str(server.process.pid), "-batch", "-ex",
                            "call (int) malloc_trim(0)"], capture_output=True, check=False)
            trimmed = server.rss_kib("RssAnon")
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
        "sockets": sockets,
        "trimmed_anon": trimmed,
    }


def fill_pools(server, docker, count, fill_deadline_seconds):
    """Registers the packs, runs one per-execution warm-up, creates the pools and waits until
    `count` warm containers are ready; returns the seconds from the pools' creation."""
    packs = POOL_PACKS[count]
    server.register_pack("bench")
    for pack in packs:
        server.register_pack(pack)
    warm_up_id = server.submit("bench.echo")
    server.wait_terminal(warm_up_id, 0.01)
    docker.wait_gone(f"attune.controller={server.controller_id}",
                     f"attune.execution={warm_up_id}")
    fill_started = time.monotonic()
    for pack in packs:
        server.wait_terminal(server.submit(f"{pack}.idle"), 0.01, deadline_seconds=300)
    deadline = time.monotonic() + fill_deadline_seconds
    last_report = 0.0
    while True:
        ready = sum(pool["ready"] for pool in server.pools())
        if ready >= count:
            return time.monotonic() - fill_started
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready} of {count} warm containers ready after "
                             f"{fill_deadline_seconds} s; log {server.log_path}")
        if time.monotonic() - last_report > 15:
            log(f"{ready}/{count} warm containers ready")
            last_report = time.monotonic()
        time.sleep(0.5)


def measure_heap(count, fill_deadline_seconds, settings, output_directory):
    """Live and peak heap (heaptrack) of a server holding `count` idle pooled containers."""
    docker = DockerApi()
    output = os.path.join(output_directory, f"heap-{count}")
    with BenchServer(f"heap-{count}", settings, command_prefix=["heaptrack", "-o", output]) as server:
        fill_pools(server, docker, count, fill_deadline_seconds)
        time.sleep(15)
        pids = subprocess.run(["pgrep", "-f", f"attune-server --bind 127.0.0.1:{server.port}"],
                              capture_output=True, text=True).stdout.split()
        for pid in pids:
            if int(pid) != server.process.pid:
                os.kill(int(pid), signal.SIGKILL)
        server.process.wait(120)
    report = subprocess.run(
        ["heaptrack_print", "-f", output + ".zst", "--print-leaks", "0", "--print-peaks", "0",
         "--print-allocators", "0", "--print-temporary", "0"],
        capture_output=True, text=True, check=True, cwd=output_directory).stdout

    def amount(label):
        # heaptrack prints decimal units: 4.19M is 4 194 304 bytes.
        match = re.search(label + r": ([0-9.]+)([KMG]?)B?", report)
        if not match:
            raise SystemExit(f"heaptrack_print gave no {label!r} for {output}.zst")
        scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]
        return float(match.group(1)) * scale / 1024
    return {"count": count, "live_kib": amount("total memory leaked"),
            "peak_kib": amount("peak heap memory consumption"), "data": output + ".zst"}


def print_heap(counts, fill_deadline_seconds, settings):
    if not shutil.which("heaptrack"):
        raise SystemExit("--heaptrack needs heaptrack (apt-get install heaptrack)")
    output_directory = tempfile.mkdtemp(prefix="attune-bench-heaptrack-")
    results = []
    for count in counts:
        log(f"server under heaptrack with {count} idle pooled containers")
        results.append(measure_heap(count, fill_deadline_seconds, settings, output_directory))
    baseline = next((result for result in results if result["count"] == 0), None)
    print(f"heaptrack data in {output_directory}\n")
    print("| idle pooled containers | live heap | growth per 1000 containers, live heap | "
          "peak heap (during the fill) |")
    print("|---:|---:|---:|---:|")
    for result in results:
        growth = ""
        if baseline is not None and result["count"] > 0:
            growth = (f"{(result['live_kib'] - baseline['live_kib']) / result['count'] * 1000 / 1024:.1f}"
                      " MiB")
        print(f"| {result['count']} | {result['live_kib'] / 1024:.1f} MiB | {growth} | "
              f"{result['peak_kib'] / 1024:.1f} MiB |")


def open_sockets(pid):
    count = 0
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{descriptor}").startswith("socket:")
        except OSError:
            pass
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="0,100,500")
    parser.add_argument("--fill-deadline", type=int, default=1200,
                        help="seconds allowed to get every pool container ready")
    parser.add_argument("--heaptrack", action="store_true",
                        help="measure live and peak heap with heaptrack instead of RSS")
    parser.add_argument("--no-trim", action="store_true",
                        help="skip the malloc_trim diagnostic (it attaches gdb to the server)")
    parser.add_argument("--agent-start-timeout", type=int, default=None,
                        help="executor.agent_start_timeout_seconds for the servers")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the servers, e.g. MALLOC_ARENA_MAX=1 "
                             "(a diagnostic: glibc's per-thread arenas)")
    args = parser.parse_args()
    settings = dict(setting.split("=", 1) for setting in args.server_env)
    if settings:
        print(f"server environment (diagnostic): {settings}\n")
    if args.agent_start_timeout:
        settings["ATTUNE__EXECUTOR__AGENT_START_TIMEOUT_SECONDS"] = str(args.agent_start_timeout)
    counts = [int(value) for value in args.counts.split(",")]
    for count in counts:
        if count not in POOL_PACKS:
            raise SystemExit(f"count {count} has no packs (known: {sorted(POOL_PACKS)})")
    if args.heaptrack:
        print_heap(counts, args.fill_deadline, settings)
        return
    results = []
    for count in counts:
        log(f"server with {count} idle pooled containers")
        results.append(measure(count, args.fill_deadline, settings, not args.no_trim))

    baseline = next((result for result in results if result["count"] == 0), None)
    print("| idle pooled containers | VmRSS | RssAnon | growth per 1000 containers, VmRSS | "
          "RssAnon after malloc_trim(0) | growth per 1000, trimmed RssAnon | VmHWM | threads | "
          "sockets | time to fill | stop (retire all) | left after stop |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def per_thousand(value, base, count):
        return f"{(value - base) / count * 1000 / 1024:.1f} MiB"

    for result in results:
        growth = trimmed_growth = ""
        trimmed = "—" if result["trimmed_anon"] is None else f"{result['trimmed_anon'] / 1024:.1f} MiB"
        if baseline is not None and result["count"] > 0:
            growth = f"**{per_thousand(result['vm_rss'], baseline['vm_rss'], result['count'])}**"
            if result["trimmed_anon"] is not None and baseline["trimmed_anon"] is not None:
                trimmed_growth = per_thousand(result["trimmed_anon"], baseline["trimmed_anon"],
                                              result["count"])
        fill = f"{result['fill_seconds']:.0f} s" if result["count"] else ""
        if result["start_failures"]:
            fill += f" ({result['start_failures']} failed starts retried)"
        print(f"| {result['count']} | {result['vm_rss'] / 1024:.1f} MiB | "
              f"{result['rss_anon'] / 1024:.1f} MiB | {growth} | {trimmed} | {trimmed_growth} | "
              f"{result['high_water'] / 1024:.1f} MiB | {result['threads']} | {result['sockets']} | "
              f"{fill} | {result['stop_seconds']:.0f} s | {result['left_after_stop']} |")


if __name__ == "__main__":
    main()
