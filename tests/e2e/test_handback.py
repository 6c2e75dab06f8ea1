"""End to end: a worker that stops hands back the tasks waiting for a human, at once."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from tests.conftest import HITL
from tests.e2e.conftest import Platform, node
from tests.support.processes import poll

#: A stopping worker must be gone well before the example workflow's own timeout (600 s).
EXIT_WITHIN = 10.0


@pytest.mark.e2e
def test_a_stopping_worker_hands_back_a_task_waiting_for_input(
    transport: str, broker_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """SIGTERM of the worker of a waiting task: it exits at once, and the task, answered
    meanwhile, ends on the other worker with that answer, run there once.

    The other worker is up before the first one stops: one that starts later may come after
    the stopped worker's lease ran out, and the recovered task's step then goes out a second
    time beside the one handed back (at-least-once; the test would see three runs)."""
    # Given a task waiting for a human on the one worker there is
    platform = make_platform(broker_url)
    platform.serve(HITL)
    platform.control_plane()
    first = platform.service_worker("w1", deployment="HumanInTheLoop", service="ask")
    platform.wait_for_workers("HumanInTheLoop", {node("w1")})
    [task_id] = platform.submit("HumanInTheLoop", [{}])
    url = f"/deployments/HumanInTheLoop/tasks/{task_id}"
    poll(
        lambda: platform.http.get(url).json()["status"],
        lambda status: status == "waiting_input",
        30.0,
        "the task waiting for input",
    )

    # And another worker of the service, up before the first one stops
    platform.service_worker("w2", deployment="HumanInTheLoop", service="ask")
    platform.wait_for_workers("HumanInTheLoop", {node("w1"), node("w2")})

    # When the task's worker is stopped (a warm shutdown), it exits at once
    began = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - began < EXIT_WITHIN
    # And the answer sent while no worker runs the task is taken
    answer = JsonSerializer().serialize(HumanResponseEvent(response="42"))  # type: ignore[call-arg]
    sent = platform.http.post(f"{url}/events", json={"event_obj_str": answer})
    assert sent.status_code == 200, sent.text

    # Then the other worker runs the task again, and it ends with that answer
    task = platform.wait_for_tasks("HumanInTheLoop", [task_id])[task_id]
    assert (task["status"], task["result"], task["attempts"]) == ("succeeded", "42", 2)
    assert platform.workers_by_task([task_id]) == {node("w2"): 1}
    # And the answer is stored once
    rows = platform.query(
        "SELECT count(*) FROM events WHERE direction = 'in' AND task_id = %s", (task_id,)
    )
    assert rows == [(1,)]
