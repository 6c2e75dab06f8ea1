"""Benchmark: how fast streamed events reach clients, and how many live streams one server holds.

    python -m tests.benchmarks.events              # the embedded mode
    python -m tests.benchmarks.events --quick

A workflow writes timestamped events (``ticker``: 20 events, 50 ms apart); clients follow
``GET /deployments/Ticker/tasks/{id}/events`` as server-sent events and note when each event
arrives. Latency is arrival time minus the time the workflow wrote the event (one machine, one
clock). Then the number of concurrent streams grows until the p99 latency passes 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.benchmarks.bench import celeriac_server, percentile, progress

TICKER = Path(__file__).resolve().parent / "ticker" / "deployment.yml"


@dataclass
class StreamResult:
    """Latencies (ms) of one stream's events, and whether it saw them all."""

    latencies: list[float]
    complete: bool


def follow(url: str, task_id: str, expected: int, out: list[StreamResult]) -> None:
    """Read one task's SSE stream to its end, noting each tick's latency."""
    latencies: list[float] = []
    seen = 0
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream(
            "GET",
            f"/deployments/Ticker/tasks/{task_id}/events",
            headers={"Accept": "text/event-stream"},
        ) as response,
    ):
        # Events written before this reader was connected measure the connection, not the
        # stream: they are counted as seen but not timed.
        connected = time.time()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = json.loads(line[6:])
            data = payload.get("data", {})
            if payload.get("type") == "Tick":
                if data["sent_at"] >= connected:
                    latencies.append((time.time() - data["sent_at"]) * 1000)
                seen += 1
            if "status" in payload and "type" not in payload:
                break
    out.append(StreamResult(latencies, seen == expected))


def round_of(url: str, streams: int, count: int, interval: float) -> tuple[list[float], int]:
    """``streams`` tasks at once, each followed by its own client; all latencies, sorted."""
    delay = 1.0 + streams * 0.02
    with httpx.Client(base_url=url, timeout=60) as client:
        ids = [
            client.post(
                "/deployments/Ticker/tasks/create",
                json={"input": {"count": count, "interval": interval, "delay": delay}},
            ).json()["task_id"]
            for _ in range(streams)
        ]
    results: list[StreamResult] = []
    threads = [threading.Thread(target=follow, args=(url, t, count, results)) for t in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(x for r in results for x in r.latencies)
    return latencies, sum(1 for r in results if not r.complete)


def main() -> None:
    """Measure event latency with one stream, then with more and more at once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-streams", type=int, default=400)
    parser.add_argument("--count", type=int, default=20, help="events per stream")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between events")
    args = parser.parse_args()
    count, interval = (10, args.interval) if args.quick else (args.count, args.interval)
    levels = [1, 10, 25, 50, 100, 200, 400]
    levels = [n for n in levels if n <= args.max_streams]
    threads = str(max(levels) + 16)
    rows = []
    # Every stream needs an HTTP thread, and every ticker a worker slot, to all run at once.
    env = {"CELERIAC_HTTP_THREADS": threads, "CELERIAC_WORKER_CONCURRENCY": threads}
    with celeriac_server(env) as (url, _proc):
        deploy = httpx.post(
            f"{url}/deployments/create",
            params={"base_path": str(TICKER.parent)},
            files={"config_file": ("deployment.yml", TICKER.read_bytes())},
        )
        deploy.raise_for_status()
        for i, streams in enumerate(levels):
            progress("event latency, streams at once", i, len(levels))
            latencies, incomplete = round_of(url, streams, count, interval)
            rows.append((streams, latencies, incomplete))
            if percentile(latencies, 0.99) > 100:
                break
        progress("event latency, streams at once", len(levels), len(levels))
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{count} events per stream, {interval * 1000:.0f} ms apart\n"
    )
    print("| streams at once | events | p50 ms | p99 ms | max ms | incomplete streams |")
    print("|---:|---:|---:|---:|---:|---:|")
    for streams, latencies, incomplete in rows:
        print(
            f"| {streams} | {len(latencies)} | {percentile(latencies, 0.5):.1f} |"
            f" {percentile(latencies, 0.99):.1f} | {latencies[-1]:.1f} | {incomplete} |"
        )
    held = [s for s, lat, inc in rows if percentile(lat, 0.99) <= 100 and not inc]
    print(f"\nMost streams held under 100 ms p99: {max(held) if held else 0}")


if __name__ == "__main__":
    main()
