#!/usr/bin/env python3
"""Cold per-execution latency: submit -> terminal status through attune-server, against
`docker run --rm --network host IMAGE sh -c 'echo hi'` measured in the same run.

Prints a Markdown table (p50, p90 of both and their ratio). Only talks to 127.0.0.1.
"""
import argparse
import json
import statistics
import subprocess
import time
import urllib.request


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def request(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def attune_once(api, action):
    started = time.perf_counter()
    created = request("POST", f"{api}/api/v1/executions", {"action": action, "parameters": {}})
    execution_id = created["id"]
    while True:
        execution = request("GET", f"{api}/api/v1/executions/{execution_id}")
        if execution["status"] not in ("requested", "scheduled", "running"):
            elapsed = time.perf_counter() - started
            if execution["status"] != "succeeded":
                raise SystemExit(f"execution {execution_id} ended {execution['status']}: {execution.get('error')}")
            return elapsed
        time.sleep(0.002)


def docker_once(image):
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "host", image, "sh", "-c", "echo hi"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--action", default="bench.echo")
    parser.add_argument("--image", default="busybox:1.36")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    for _ in range(args.warmup):
        attune_once(args.api, args.action)
        docker_once(args.image)
    attune, docker = [], []
    # Interleave so both see the same machine state.
    for _ in range(args.runs):
        attune.append(attune_once(args.api, args.action))
        docker.append(docker_once(args.image))

    def ms(value):
        return f"{value * 1000:.0f} ms"

    rows = [
        ("attune cold (submit → terminal)", attune),
        ("docker run --rm --network host", docker),
    ]
    print(f"runs: {args.runs} each, interleaved, after {args.warmup} warm-up runs of each\n")
    print("| path | p50 | p90 | mean |")
    print("|---|---|---|---|")
    for name, values in rows:
        print(f"| {name} | {ms(percentile(values, 0.5))} | {ms(percentile(values, 0.9))} | {ms(statistics.mean(values))} |")
    print(f"| **ratio attune / docker run** | **{percentile(attune, 0.5) / percentile(docker, 0.5):.2f}** "
          f"| **{percentile(attune, 0.9) / percentile(docker, 0.9):.2f}** | "
          f"{statistics.mean(attune) / statistics.mean(docker):.2f} |")


if __name__ == "__main__":
    main()
