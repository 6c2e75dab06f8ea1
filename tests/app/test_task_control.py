"""Task control on the embedded server (a real in-process worker of four slots): cancel a
queued, a running and a waiting task; time limits that free the slot; tasks that wait in the
queue past their allowed wait; retries by policy with their backoff measured; the workflow
server's cancel; cancel and retry from the SDK and the CLI; a deleted deployment's tasks."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from app.sdk import AsyncClient, Client, Conflict
from tests.app.conftest import (
    WORKFLOWS,
    asked,
    assert_error,
    deployed,
    ok,
    poll,
    wait_for_task,
)
from tests.app.test_cli import on

#: Each test waits on real time (naps, time limits, backoffs): once per run of the suite.
pytestmark = pytest.mark.timing

CONTROLLED = WORKFLOWS / "controlled" / "deployment.yml"
TASKS = "/deployments/Controlled/tasks"
#: The worker slots of the test server (``tests.conftest.settings``).
SLOTS = 4


def create(client: FlaskClient, service: str, **run_input: Any) -> str:
    """Queue a task of ``service`` with ``run_input`` (a JSON object); its id."""
    body = {"service_id": service, "input": run_input}
    return str(ok(client.post(f"{TASKS}/create", json=body))["task_id"])


def task(client: FlaskClient, task_id: str) -> dict[str, Any]:
    return dict(ok(client.get(f"{TASKS}/{task_id}")))


def status_is(client: FlaskClient, task_id: str, *statuses: str) -> dict[str, Any]:
    """Wait until the task is in one of ``statuses``; the task."""
    found: dict[str, Any] = poll(lambda: task(client, task_id), lambda t: t["status"] in statuses)
    return found


def lines(trace: Path) -> list[str]:
    return trace.read_text().split() if trace.exists() else []


def queued_in_broker(queue: str) -> int:
    """Messages waiting in an embedded (``memory://``) queue."""
    waiting = memory.Channel.queues.get(queue)
    return 0 if waiting is None else waiting.qsize()


def fill_slots(client: FlaskClient, tmp_path: Path, seconds: float = 60) -> list[str]:
    """Every worker slot taken by a nap of ``seconds``, running; the tasks' ids."""
    ids = [
        create(client, "nap", seconds=seconds, trace=str(tmp_path / f"blocker-{n}"))
        for n in range(SLOTS)
    ]
    for task_id in ids:
        status_is(client, task_id, "running")
    return ids


# -- cancel -----------------------------------------------------------------------------------


def test_a_cancelled_queued_task_never_starts_once_a_slot_is_free(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given every slot busy, and one more task whose step waits in the broker
    deployed(client, CONTROLLED)
    blockers = fill_slots(client, tmp_path)
    trace = tmp_path / "queued"
    waiting = create(client, "nap", seconds=0, trace=str(trace))
    assert queued_in_broker("celeriac.Controlled.nap") == 1
    # When it is cancelled
    cancelled = ok(client.post(f"{TASKS}/{waiting}/cancel"))
    # Then it is cancelled at once, with the error that says so
    assert cancelled["status"] == "cancelled"
    assert task(client, waiting)["error"]["type"] == "celeriac.Cancelled"
    # And once the running ones are cancelled too, the worker takes its step and drops it
    for blocker in blockers:
        assert ok(client.post(f"{TASKS}/{blocker}/cancel"))["status"] == "cancelled"
    poll(lambda: queued_in_broker("celeriac.Controlled.nap"), lambda n: n == 0)
    # A task queued after it runs on a freed slot, and by then the cancelled one would have
    later = create(client, "nap", seconds=0, trace=str(tmp_path / "later"))
    assert wait_for_task(client, "Controlled", later)["status"] == "succeeded"
    assert lines(trace) == []
    after = task(client, waiting)
    assert (after["status"], after["attempts"], after["attempt_history"]) == ("cancelled", 0, [])


def test_a_cancelled_running_task_is_stopped_politely_and_frees_its_slot(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given every slot busy with a long nap
    deployed(client, CONTROLLED)
    blockers = fill_slots(client, tmp_path)
    # When one of them is cancelled
    started = time.monotonic()
    assert ok(client.post(f"{TASKS}/{blockers[0]}/cancel"))["status"] == "cancelled"
    # Then its workflow got CancelledError (it noted it), its run is recorded as cancelled
    poll(lambda: lines(tmp_path / "blocker-0"), lambda trace: "cancelled" in trace)
    run = poll(
        lambda: task(client, blockers[0])["attempt_history"],
        lambda runs: runs and runs[-1]["outcome"] == "cancelled",
    )[-1]
    assert run["error"]["type"] == "celeriac.Cancelled"
    # And its slot is free: a new task runs while the three others still nap
    quick = create(client, "nap", seconds=0, trace=str(tmp_path / "quick"))
    assert wait_for_task(client, "Controlled", quick)["status"] == "succeeded"
    assert time.monotonic() - started < 5
    for blocker in blockers[1:]:
        assert task(client, blocker)["status"] == "running"
        ok(client.post(f"{TASKS}/{blocker}/cancel"))


def test_a_cancelled_waiting_task_ends_and_its_session_moves_on(
    client: FlaskClient, server: Any, tmp_path: Path
) -> None:
    # Given a session whose first task waits for a person, and a second queued behind it
    deployed(client, CONTROLLED)
    session = ok(client.post("/deployments/Controlled/sessions/create"))["session_id"]
    first = ok(
        client.post(
            f"{TASKS}/create",
            query_string={"session_id": session},
            json={"input": {"ask": True, "trace": str(tmp_path / "first")}},
        )
    )["task_id"]
    asked(server, first)
    second = ok(
        client.post(
            f"{TASKS}/create",
            query_string={"session_id": session},
            json={"input": {"seconds": 0, "trace": str(tmp_path / "second")}},
        )
    )["task_id"]
    assert status_is(client, first, "waiting_input")
    assert task(client, second)["status"] == "queued"
    # When the waiting task is cancelled
    ok(client.post(f"{TASKS}/{first}/cancel"))
    # Then it ends cancelled, its run was stopped (a step waiting for an event is not
    # running: the run ends without it), and the next task takes the turn
    assert task(client, first)["status"] == "cancelled"
    poll(
        lambda: task(client, first)["attempt_history"],
        lambda runs: runs and runs[-1]["outcome"] == "cancelled",
    )
    assert wait_for_task(client, "Controlled", second)["result"] == "slept 0s"
    # And an answer sent now is refused: the task has ended
    answer = {
        "event_obj_str": json.dumps(
            {
                "__is_pydantic": True,
                "value": {"response": "y"},
                "qualified_name": "HumanResponseEvent",
            }
        )
    }
    assert_error(client.post(f"{TASKS}/{first}/events", json=answer), 409)


def test_cancelling_an_ended_or_unknown_task_is_refused_and_changes_nothing(
    client: FlaskClient, tmp_path: Path
) -> None:
    deployed(client, CONTROLLED)
    done = create(client, "nap", seconds=0, trace=str(tmp_path / "done"))
    assert wait_for_task(client, "Controlled", done)["status"] == "succeeded"
    body = assert_error(client.post(f"{TASKS}/{done}/cancel"), 409)
    assert body["errors"] == {"task_id": done, "status": "succeeded"}
    assert task(client, done)["status"] == "succeeded"
    assert_error(client.post(f"{TASKS}/nope/cancel"), 404)
    assert_error(client.post("/deployments/Nope/tasks/nope/cancel"), 404)


def test_a_cancelled_task_can_be_retried_and_then_runs(client: FlaskClient, tmp_path: Path) -> None:
    deployed(client, CONTROLLED)
    trace = tmp_path / "again"
    task_id = create(client, "nap", seconds=1, trace=str(trace))
    status_is(client, task_id, "running")
    ok(client.post(f"{TASKS}/{task_id}/cancel"))
    retried = ok(client.post(f"{TASKS}/{task_id}/retry"))
    assert retried["run"] == 2
    assert wait_for_task(client, "Controlled", task_id)["result"] == "slept 1s"
    assert lines(trace).count("end") == 1


# -- time limits ------------------------------------------------------------------------------


def test_a_run_past_its_time_limit_times_out_and_frees_its_slot(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given every slot taken by runs of a service whose time limit is one second
    deployed(client, CONTROLLED)
    started = time.monotonic()
    limited = [
        create(client, "limited", seconds=60, trace=str(tmp_path / f"limited-{n}"))
        for n in range(SLOTS)
    ]
    # And one more task, of a service without a limit, waiting for a slot
    quick = create(client, "nap", seconds=0, trace=str(tmp_path / "quick"))
    # Then each limited run ends timed_out after about a second, stopped politely
    for task_id in limited:
        ended = wait_for_task(client, "Controlled", task_id)
        assert ended["status"] == "timed_out"
        assert ended["error"]["type"] == "celeriac.TimeLimitExceeded"
        assert "time-limit of 1 s" in ended["error"]["message"]
        assert ended["attempt_history"][-1]["outcome"] == "timed_out"
    for n in range(SLOTS):
        assert "cancelled" in lines(tmp_path / f"limited-{n}")
    # And the waiting task ran on a freed slot, long before the naps would have ended
    assert wait_for_task(client, "Controlled", quick)["status"] == "succeeded"
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 6, elapsed


def test_a_task_sets_its_own_time_limit_and_a_bad_one_is_refused(
    client: FlaskClient, tmp_path: Path
) -> None:
    deployed(client, CONTROLLED)
    body = {
        "service_id": "nap",
        "input": {"seconds": 30, "trace": str(tmp_path / "t")},
        "time_limit": 0.5,
    }
    task_id = ok(client.post(f"{TASKS}/create", json=body))["task_id"]
    ended = wait_for_task(client, "Controlled", task_id)
    assert (ended["status"], ended["controls"]) == ("timed_out", {"time-limit": 0.5})
    for bad in (0, -1, "soon", 10**9, True):
        refused = assert_error(
            client.post(f"{TASKS}/create", json={**body, "time_limit": bad}), 422
        )
        assert "time_limit" in json.dumps(refused["errors"])


def test_a_task_that_waits_in_the_queue_past_its_allowed_wait_never_starts(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given every slot busy, and a task allowed to wait half a second
    deployed(client, CONTROLLED)
    blockers = fill_slots(client, tmp_path)
    trace = tmp_path / "late"
    body = {"service_id": "nap", "input": {"seconds": 0, "trace": str(trace)}, "queue_timeout": 0.5}
    late = ok(client.post(f"{TASKS}/create", json=body))["task_id"]
    # Then it times out without starting, within the deadlines' sweep
    ended = wait_for_task(client, "Controlled", late)
    assert ended["status"] == "timed_out"
    assert ended["error"]["type"] == "celeriac.QueueTimeout"
    assert ended["started_at"] is None
    # And once slots are free its step is taken and not run
    for blocker in blockers:
        ok(client.post(f"{TASKS}/{blocker}/cancel"))
    poll(lambda: queued_in_broker("celeriac.Controlled.nap"), lambda n: n == 0)
    later = create(client, "nap", seconds=0, trace=str(tmp_path / "later"))
    wait_for_task(client, "Controlled", later)
    assert lines(trace) == []


# -- retries by policy ------------------------------------------------------------------------


def test_a_failing_run_is_retried_by_policy_with_its_backoff(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a task of the retried service (3 attempts, backoff 0.4 s doubling, no jitter)
    # that fails twice with ConnectionError
    deployed(client, CONTROLLED)
    trace = tmp_path / "runs"
    task_id = create(client, "retried", fail=2, trace=str(trace))
    # Then it shows retrying between runs, with its last error and when it runs again
    waiting = status_is(client, task_id, "retrying", "succeeded")
    if waiting["status"] == "retrying":
        assert waiting["error"]["message"] == "run 1 fails"
        assert waiting["retry_at"] is not None
    # And it succeeds on its third run, recorded as such
    ended = wait_for_task(client, "Controlled", task_id)
    assert (ended["status"], ended["result"], ended["run"]) == (
        "succeeded",
        "succeeded on run 3",
        3,
    )
    assert [run["outcome"] for run in ended["attempt_history"]] == [
        "failed",
        "failed",
        "succeeded",
    ]
    # And the runs began after the backoff: 0.4 s, then 0.8 s (plus the dispatch)
    words = lines(trace)
    starts = [float(words[n + 1]) for n in range(0, len(words), 2) if words[n] == "start"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 0.4 <= gaps[0] < 0.4 + 0.35, gaps
    assert 0.8 <= gaps[1] < 0.8 + 0.35, gaps


def test_an_error_the_policy_does_not_name_fails_at_once(
    client: FlaskClient, tmp_path: Path
) -> None:
    deployed(client, CONTROLLED)
    trace = tmp_path / "runs"
    task_id = create(client, "retried", fail=5, error="ValueError", trace=str(trace))
    ended = wait_for_task(client, "Controlled", task_id)
    assert (ended["status"], ended["run"], ended["error"]["type"]) == (
        "failed",
        1,
        "builtins.ValueError",
    )
    assert lines(trace).count("start") == 1


def test_a_policy_gives_up_after_its_attempts(client: FlaskClient, tmp_path: Path) -> None:
    deployed(client, CONTROLLED)
    task_id = create(client, "retried", fail=10, trace=str(tmp_path / "runs"))
    ended = wait_for_task(client, "Controlled", task_id)
    assert (ended["status"], ended["run"], ended["error"]["message"]) == (
        "failed",
        3,
        "run 3 fails",
    )


def test_a_retrying_task_can_be_cancelled_and_never_runs_again(
    client: FlaskClient, tmp_path: Path
) -> None:
    deployed(client, CONTROLLED)
    trace = tmp_path / "runs"
    task_id = create(client, "retried", fail=10, trace=str(trace))
    status_is(client, task_id, "retrying")
    assert ok(client.post(f"{TASKS}/{task_id}/cancel"))["status"] == "cancelled"
    time.sleep(1.5)  # past every backoff of the policy
    assert lines(trace).count("start") == 1
    assert task(client, task_id)["status"] == "cancelled"


# -- other surfaces ---------------------------------------------------------------------------


def test_the_workflow_servers_cancel_cancels_and_purges(
    client: FlaskClient, tmp_path: Path
) -> None:
    deployed(client, CONTROLLED)
    handlers = "/deployments/Controlled/handlers"
    running = create(client, "nap", seconds=60, trace=str(tmp_path / "one"))
    status_is(client, running, "running")
    assert ok(client.post(f"{handlers}/{running}/cancel")) == {"status": "cancelled"}
    assert ok(client.get(f"{handlers}/{running}"))["status"] == "cancelled"
    # An ended handler is not cancelled again, but purge deletes it
    assert_error(client.post(f"{handlers}/{running}/cancel"), 409)
    assert ok(client.post(f"{handlers}/{running}/cancel?purge=true")) == {"status": "deleted"}
    assert_error(client.get(f"{handlers}/{running}"), 404)
    assert_error(client.post(f"{handlers}/{running}/cancel?purge=true"), 404)


def test_the_sdk_and_the_cli_cancel(live_server: str, client: FlaskClient, tmp_path: Path) -> None:
    deployed(client, CONTROLLED)
    naps = [create(client, "nap", seconds=60, trace=str(tmp_path / f"n{n}")) for n in range(3)]
    with Client(live_server) as sdk:
        assert sdk.tasks.cancel("Controlled", naps[0]).status == "cancelled"
        with pytest.raises(Conflict) as refused:
            sdk.tasks.cancel("Controlled", naps[0])
        assert refused.value.errors == {"task_id": naps[0], "status": "cancelled"}
        limited = sdk.tasks.create(
            "Controlled",
            {"seconds": 30, "trace": str(tmp_path / "sdk")},
            service="nap",
            time_limit=0.5,
        )
        assert limited.controls == {"time-limit": 0.5}

    async def async_cancel() -> str:
        async with AsyncClient(live_server) as sdk:
            return (await sdk.tasks.cancel("Controlled", naps[1])).status

    assert asyncio.run(async_cancel()) == "cancelled"
    printed = on(live_server, "tasks", "cancel", "-d", "Controlled", naps[2])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["status"] == "cancelled"
    again = on(live_server, "tasks", "cancel", "-d", "Controlled", naps[2])
    assert again.exit_code != 0 and "cancelled" in again.output
    assert wait_for_task(client, "Controlled", limited.task_id)["status"] == "timed_out"


def test_deleting_a_deployment_cancels_its_tasks_and_none_comes_back(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given every slot busy and one more task's step waiting in the broker
    deployed(client, CONTROLLED)
    fill_slots(client, tmp_path, seconds=2)
    trace = tmp_path / "orphan"
    create(client, "nap", seconds=0, trace=str(trace))
    # When the deployment is deleted, then made again under the same name
    assert client.delete("/deployments/Controlled").status_code in (200, 204)
    deployed(client, CONTROLLED)
    # Then the old runs were stopped, and the waiting step is dropped, never run
    poll(lambda: queued_in_broker("celeriac.Controlled.nap"), lambda n: n == 0)
    later = create(client, "nap", seconds=0, trace=str(tmp_path / "later"))
    assert wait_for_task(client, "Controlled", later)["status"] == "succeeded"
    assert lines(trace) == []
    for n in range(SLOTS):
        assert "end" not in lines(tmp_path / f"blocker-{n}")
