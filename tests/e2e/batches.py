"""Batches of counted tasks for the fault tests: start a platform of the ``Counted`` deployment,
submit numbered tasks, and check that a batch ended with every task succeeded, recorded once,
and run at least once by the workflow's own count (a line per run in a file of its own)."""

from __future__ import annotations

import collections
from pathlib import Path

from tests.e2e.conftest import TERMINAL, Platform, node


class Runs:
    """The runs the workflow noted: task number to the (time, pid) of each run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[int, list[tuple[float, int]]]:
        """Every run noted so far."""
        runs: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                n, at, pid = line.split()
                runs[int(n)].append((float(at), int(pid)))
        return runs


def start(platform: Platform, deployment: Path, workers: int = 2, concurrency: int = 4) -> None:
    """The API server, the control-plane consumer and ``workers`` service workers, all ready."""
    platform.serve(deployment)
    platform.control_plane()
    names = {node(f"w{i}") for i in range(1, workers + 1)}
    for name in sorted(names):
        platform.service_worker(
            name.split("@")[0], deployment="Counted", service="work", concurrency=concurrency
        )
    platform.wait_for_workers("Counted", names)
    platform.wait_for_consumer(node("control-plane"))


def submit(platform: Platform, runs: Runs, count: int, seconds: float, first: int = 0) -> list[str]:
    """Queue ``count`` tasks numbered from ``first``; their ids, in the order of their numbers."""
    inputs = [
        {"n": n, "seconds": seconds, "log": str(runs.path)} for n in range(first, first + count)
    ]
    return platform.submit("Counted", inputs)


def unfinished(platform: Platform, ids: list[str]) -> int:
    """How many of these tasks have not ended yet."""
    tasks = platform.tasks("Counted")
    return sum(1 for i in ids if tasks.get(i, {}).get("status") not in TERMINAL)


def assert_batch_complete(
    platform: Platform, ids: list[str], runs: Runs, first: int = 0
) -> dict[int, int]:
    """Every task ended and succeeded, recorded once, and ran at least once by the workflow's
    own count; returns the tasks that ran more than once, with how many times."""
    tasks = platform.wait_for_tasks("Counted", ids)
    statuses = collections.Counter(t["status"] for t in tasks.values())
    assert statuses["succeeded"] + statuses["failed"] == len(ids), statuses
    assert statuses == {"succeeded": len(ids)}, {
        i: (t["status"], t["error"]) for i, t in tasks.items() if t["status"] != "succeeded"
    }
    assert sorted(t["result"] for t in tasks.values()) == sorted(
        f"done {n}" for n in range(first, first + len(ids))
    )
    recorded = platform.stop_events(ids)
    assert recorded == dict.fromkeys(ids, 1), {i: c for i, c in recorded.items() if c != 1}
    counts = {n: len(r) for n, r in runs.read().items() if first <= n < first + len(ids)}
    never = sorted(set(range(first, first + len(ids))) - set(counts))
    assert not never, f"tasks recorded as succeeded that the workflow never ran: {never}"
    return {n: c for n, c in counts.items() if c > 1}
