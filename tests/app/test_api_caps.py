"""Concurrency caps on the embedded server (a real in-process worker of four slots): a capped
service runs at most its limit at once, in all and per value of its key, while worker slots
stay free; the others wait in order of arrival, unsent; a cancel, a time-out or a cancel of a
waiting task lets the next one start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from tests.app.conftest import WORKFLOWS, deployed, ok, poll, wait_for_task
from tests.support.overlap import most_at_once

pytestmark = pytest.mark.timing

CONTROLLED = WORKFLOWS / "controlled" / "deployment.yml"
TASKS = "/deployments/Controlled/tasks"
#: A nap long enough to overlap with the others, short enough for a test.
NAP = 0.4


def create(client: FlaskClient, service: str, **body: Any) -> str:
    """Queue a task of ``service`` (``body`` holds its ``input`` and any other field)."""
    return str(ok(client.post(f"{TASKS}/create", json={"service_id": service, **body}))["task_id"])


def nap(client: FlaskClient, service: str, trace: Path, seconds: float = NAP, **more: Any) -> str:
    """Queue a nap of ``seconds`` that notes its start and end in ``trace``."""
    return create(client, service, input={"seconds": seconds, "trace": str(trace), **more})


def statuses(client: FlaskClient, ids: list[str]) -> list[str]:
    return [ok(client.get(f"{TASKS}/{task_id}"))["status"] for task_id in ids]


def interval(trace: Path) -> tuple[float, float]:
    """When the nap noted in ``trace`` started and ended (or was cancelled)."""
    times = dict(line.split() for line in trace.read_text().splitlines())
    return float(times["start"]), float(times.get("end", times.get("cancelled", "inf")))


def in_broker(service: str) -> int:
    """Steps of the service waiting in its embedded (``memory://``) queue."""
    waiting = memory.Channel.queues.get(f"celeriac.Controlled.{service}")
    return 0 if waiting is None else waiting.qsize()


def test_a_capped_service_runs_at_most_its_limit_and_the_others_wait_unsent_in_order(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a service capped at two at once, on a worker of four slots
    deployed(client, CONTROLLED)
    traces = [tmp_path / f"nap-{n}" for n in range(6)]
    # When six naps are queued
    ids = [nap(client, "capped", trace) for trace in traces]
    # Then two run while the four others wait queued, though two worker slots are free:
    # their steps were not sent
    poll(lambda: statuses(client, ids), lambda found: found.count("running") == 2)
    assert statuses(client, ids)[2:] == ["queued"] * 4
    assert in_broker("capped") == 0
    # And all six succeed, never more than two at once, started in order of arrival
    for task_id in ids:
        assert wait_for_task(client, "Controlled", task_id)["status"] == "succeeded"
    spans = [interval(trace) for trace in traces]
    assert most_at_once(spans) == 2
    starts = [start for start, _ in spans]
    assert starts[2:] == sorted(starts[2:])
    assert min(starts[2:]) >= min(end for _, end in spans[:2])


def test_a_cap_per_key_runs_one_task_per_user_and_at_most_three_in_all(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a service capped at three at once and one per user
    deployed(client, CONTROLLED)
    users = ["ann", "ann", "ann", "bob", "bob", "cat", "dan", "eve"]
    traces = [tmp_path / f"nap-{n}" for n in range(len(users))]
    # When naps of five users are queued
    ids = [
        nap(client, "keyed", trace, user=user) for trace, user in zip(traces, users, strict=True)
    ]
    # Then all succeed, at most one per user at once, and at most three in all
    for task_id in ids:
        assert wait_for_task(client, "Controlled", task_id)["status"] == "succeeded"
    spans = [interval(trace) for trace in traces]
    for user in set(users):
        assert most_at_once(s for s, u in zip(spans, users, strict=True) if u == user) == 1, user
    assert most_at_once(spans) == 3


def test_a_cancel_of_a_running_capped_task_lets_the_next_one_start_at_once(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given both slots of the capped service taken by long naps, and a quick one waiting
    deployed(client, CONTROLLED)
    long = [nap(client, "capped", tmp_path / f"long-{n}", seconds=60) for n in range(2)]
    quick = nap(client, "capped", tmp_path / "quick", seconds=0)
    poll(lambda: statuses(client, long), lambda found: found == ["running"] * 2)
    assert statuses(client, [quick]) == ["queued"]
    # When one long nap is cancelled
    started = time.monotonic()
    assert ok(client.post(f"{TASKS}/{long[0]}/cancel"))["status"] == "cancelled"
    # Then the quick one runs in its slot, while the other long nap still runs
    assert wait_for_task(client, "Controlled", quick)["status"] == "succeeded"
    assert time.monotonic() - started < 5
    assert statuses(client, long) == ["cancelled", "running"]
    ok(client.post(f"{TASKS}/{long[1]}/cancel"))


def test_a_capped_run_past_its_time_limit_lets_the_next_one_start(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given both slots taken by naps with a time limit of half a second, and one waiting
    deployed(client, CONTROLLED)
    started = time.monotonic()
    limited = [
        create(
            client,
            "capped",
            input={"seconds": 60, "trace": str(tmp_path / f"timed-{n}")},
            time_limit=0.5,
        )
        for n in range(2)
    ]
    waiting = nap(client, "capped", tmp_path / "waiting", seconds=0)
    # Then each limited run times out, and the waiting one runs in a freed slot
    for task_id in limited:
        assert wait_for_task(client, "Controlled", task_id)["status"] == "timed_out"
    assert wait_for_task(client, "Controlled", waiting)["status"] == "succeeded"
    assert time.monotonic() - started < 6
    # And the waiting one started only once a limited one had stopped
    stopped = min(interval(tmp_path / f"timed-{n}")[1] for n in range(2))
    assert interval(tmp_path / "waiting")[0] >= stopped


def test_a_cancelled_waiting_task_never_runs_and_the_slot_goes_to_the_next(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given both slots taken, and two tasks waiting
    deployed(client, CONTROLLED)
    running = [nap(client, "capped", tmp_path / f"running-{n}") for n in range(2)]
    first, second = (nap(client, "capped", tmp_path / f"waiting-{n}") for n in range(2))
    # When the first waiting one is cancelled
    assert ok(client.post(f"{TASKS}/{first}/cancel"))["status"] == "cancelled"
    # Then it never runs, and the second runs once a slot is free
    assert wait_for_task(client, "Controlled", second)["status"] == "succeeded"
    assert not (tmp_path / "waiting-0").exists()
    assert [wait_for_task(client, "Controlled", t)["status"] for t in running] == ["succeeded"] * 2
