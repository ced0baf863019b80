#!/usr/bin/env python3
"""Warm-pool latency and throughput of trivial shell actions, against a bare
`sh -c 'echo hi'` spawn on the host measured in the same run. Only talks to 127.0.0.1."""
import argparse
import concurrent.futures
import json
import subprocess
import time
import urllib.request


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def request(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


def submit(api, action):
    return request("POST", f"{api}/api/v1/executions", {"action": action, "parameters": {}})["id"]


def wait(api, execution_id, poll):
    while True:
        execution = request("GET", f"{api}/api/v1/executions/{execution_id}")
        if execution["status"] not in ("requested", "scheduled", "running"):
            if execution["status"] != "succeeded":
                raise SystemExit(f"execution {execution_id}: {execution['status']} {execution.get('error')}")
            return execution
        time.sleep(poll)


def attune_once(api, action):
    started = time.perf_counter()
    execution_id = submit(api, action)
    wait(api, execution_id, 0.0005)
    return time.perf_counter() - started


def spawn_once():
    started = time.perf_counter()
    subprocess.run(["sh", "-c", "echo hi"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def throughput_attune(api, action, total, concurrency):
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as workers:
        ids = list(workers.map(lambda _: submit(api, action), range(total)))
        list(workers.map(lambda execution_id: wait(api, execution_id, 0.005), ids))
    return total / (time.perf_counter() - started)


def throughput_spawn(total, concurrency):
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as workers:
        list(workers.map(lambda _: spawn_once(), range(total)))
    return total / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--action", default="bench.warm_echo")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--throughput-total", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    for _ in range(10):  # fill the pool and warm caches
        attune_once(args.api, args.action)
        spawn_once()
    attune, spawn = [], []
    for _ in range(args.runs):
        attune.append(attune_once(args.api, args.action))
        spawn.append(spawn_once())

    def ms(value):
        return f"{value * 1000:.1f} ms"

    print(f"latency: {args.runs} runs each, interleaved, after 10 warm-up runs\n")
    print("| path | p50 | p90 | p99 |")
    print("|---|---|---|---|")
    for name, values in (("attune warm pool (submit → terminal)", attune),
                         ("bare `sh -c 'echo hi'` spawn on the host", spawn)):
        print(f"| {name} | {ms(percentile(values, 0.5))} | {ms(percentile(values, 0.9))} | {ms(percentile(values, 0.99))} |")
    print(f"| **overhead (attune − spawn)** | **{ms(percentile(attune, 0.5) - percentile(spawn, 0.5))}** "
          f"| {ms(percentile(attune, 0.9) - percentile(spawn, 0.9))} | **{ms(percentile(attune, 0.99) - percentile(spawn, 0.99))}** |")

    attune_rate = throughput_attune(args.api, args.action, args.throughput_total, args.concurrency)
    spawn_rate = throughput_spawn(args.throughput_total, args.concurrency)
    print(f"\nthroughput: {args.throughput_total} actions at concurrency {args.concurrency}\n")
    print("| path | actions/s |")
    print("|---|---|")
    print(f"| attune warm pool | {attune_rate:.1f} |")
    print(f"| bare spawn loop | {spawn_rate:.1f} |")
    print(f"| **ratio** | **{attune_rate / spawn_rate:.3f}** |")


if __name__ == "__main__":
    main()
