"""A durable task's steps and its parked state through the SDK (sync and async) and the
``celeriac`` command line, against a live embedded server."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from workflows.events import HumanResponseEvent

from app.cli.main import cli
from app.cli.tasks import _no_steps
from app.sdk import AsyncClient, Client, NotFound, Step, Task
from app.server import Server
from config.settings import Settings
from tests.app.conftest import poll
from tests.conftest import embedded_settings
from tests.support.cli_tables import blocks, rows

SUITE = Path(__file__).resolve().parent / "workflows" / "durable" / "deployment.yml"
DEPLOYMENT = "DurableSuite"
#: Bound on any one wait; only a failing test waits this long.
DEADLINE = 10.0
PIPELINE = ["one", "two", "three", "four", "five"]
PIPELINE_OUTCOMES = [
    "returned Two",
    "returned Three",
    "returned Four",
    "returned Five",
    "returned StopEvent",
]
STEP_HEADERS = ["STEP", "INPUT", "ATTEMPT", "STARTED", "DURATION", "OUTCOME"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings whose durable runs are let go after half a second of waiting."""
    return embedded_settings(tmp_path, worker_concurrency=2, release_after=0.5)


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def sdk(live_server: str) -> Iterator[Client]:
    """A sync client of the live server, with the durable suite deployed."""
    with Client(live_server, timeout=DEADLINE) as client:
        client.deployments.create(SUITE)
        yield client


def answer(text: str) -> HumanResponseEvent:
    return HumanResponseEvent(response=text)  # type: ignore[call-arg]


def on(server: str, *args: str) -> Result:
    """Run ``celeriac -s SERVER ARGS...`` in this process."""
    return CliRunner().invoke(cli, ["-s", server, *args], prog_name="celeriac")


def finished_pipeline(sdk: Client, tmp_path: Path) -> Task:
    """A pipeline task run to its end, once its five steps are listed."""
    task = sdk.tasks.create(DEPLOYMENT, {"log": str(tmp_path / "steps.log")}, service="pipeline")
    done = sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE)
    assert (done.status, done.result) == ("succeeded", {"total": 15}), done
    poll(lambda: sdk.tasks.steps(DEPLOYMENT, task.task_id), lambda s: len(s) == 5)
    return done


def parked_ask(sdk: Client) -> Task:
    """An ``ask`` task once it asked and was let go."""
    task = sdk.tasks.create(DEPLOYMENT, service="ask")
    parked: Task = poll(lambda: sdk.tasks.get(DEPLOYMENT, task.task_id), lambda t: t.parked)
    return parked


# --- SDK ----------------------------------------------------------------------------------------


def test_the_steps_of_a_durable_task_are_typed_records(sdk: Client, tmp_path: Path) -> None:
    task = finished_pipeline(sdk, tmp_path)
    steps = sdk.tasks.steps(DEPLOYMENT, task.task_id)
    assert all(isinstance(step, Step) for step in steps)
    assert [s.step for s in steps] == PIPELINE
    assert [s.outcome for s in steps] == PIPELINE_OUTCOMES
    assert [s.input.rsplit(".", 1)[-1] for s in steps] == [
        "StartEvent",
        "Two",
        "Three",
        "Four",
        "Five",
    ]
    for step in steps:
        assert (step.attempt, step.run) == (1, 1)
        assert isinstance(step.started_at, dt.datetime) and isinstance(step.ended_at, dt.datetime)
        assert step.started_at <= step.ended_at
        assert step.duration is not None and step.duration >= 0
    # The steps ended in order, within the task's run
    assert [s.ended_at for s in steps] == sorted(s.ended_at for s in steps if s.ended_at)
    assert task.started_at is not None and task.finished_at is not None
    assert task.started_at <= steps[0].ended_at  # type: ignore[operator]
    assert not task.parked and task.parked_at is None


def test_a_task_that_is_not_durable_has_no_steps(sdk: Client) -> None:
    task = sdk.tasks.create(DEPLOYMENT, service="plain")
    assert sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE).status == "succeeded"
    assert sdk.tasks.steps(DEPLOYMENT, task.task_id) == []


def test_the_steps_of_an_unknown_task_are_not_found(sdk: Client) -> None:
    with pytest.raises(NotFound):
        sdk.tasks.steps(DEPLOYMENT, "no-such-task")
    with pytest.raises(NotFound):
        sdk.tasks.steps("NoSuchDeployment", "no-such-task")


def test_a_parked_task_says_so_until_its_answer_resumes_it(sdk: Client) -> None:
    parked = parked_ask(sdk)
    assert parked.status == "waiting_input"
    assert isinstance(parked.parked_at, dt.datetime)
    assert parked.started_at is not None and parked.started_at <= parked.parked_at
    # A list says so too
    [listed] = [t for t in sdk.tasks.list(DEPLOYMENT) if t.task_id == parked.task_id]
    assert listed.parked_at == parked.parked_at
    # The step before the question ended, and is listed
    before = sdk.tasks.steps(DEPLOYMENT, parked.task_id)
    assert [s.step for s in before][:1] == ["first"]
    assert before[0].outcome == "returned Asked"

    sdk.tasks.send_event(DEPLOYMENT, parked.task_id, answer("42"), service="ask")
    done = sdk.tasks.wait(DEPLOYMENT, parked.task_id, timeout=DEADLINE)
    assert (done.status, done.result) == ("succeeded", {"answer": "42", "first": "done"})
    assert not done.parked and done.parked_at is None
    after = poll(
        lambda: sdk.tasks.steps(DEPLOYMENT, parked.task_id),
        lambda s: s and s[-1].outcome == "returned StopEvent",
    )
    # ``first`` once; ``ask`` ended last, run again from its top with the answer
    assert [s.step for s in after].count("first") == 1
    assert after[-1].step == "ask" and after[-1].attempt >= 2


def test_the_async_client_reads_steps_and_parked_tasks(live_server: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(SUITE)
            log = str(tmp_path / "async.log")
            task = await sdk.tasks.create(DEPLOYMENT, {"log": log}, service="pipeline")
            done = await sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE)
            assert done.status == "succeeded", done
            for _ in range(100):
                steps = await sdk.tasks.steps(DEPLOYMENT, task.task_id)
                if len(steps) == 5:
                    break
                await asyncio.sleep(0.05)
            assert [s.step for s in steps] == PIPELINE
            assert all(isinstance(s, Step) and s.duration is not None for s in steps)

            asking = await sdk.tasks.create(DEPLOYMENT, service="ask")
            for _ in range(200):
                got = await sdk.tasks.get(DEPLOYMENT, asking.task_id)
                if got.parked:
                    break
                await asyncio.sleep(0.05)
            assert got.status == "waiting_input" and got.parked_at is not None
            await sdk.tasks.send_event(DEPLOYMENT, asking.task_id, answer("yes"), service="ask")
            ended = await sdk.tasks.wait(DEPLOYMENT, asking.task_id, timeout=DEADLINE)
            assert ended.result == {"answer": "yes", "first": "done"}
            assert ended.parked_at is None

            with pytest.raises(NotFound):
                await sdk.tasks.steps(DEPLOYMENT, "no-such-task")

    asyncio.run(scenario())


# --- command line -------------------------------------------------------------------------------


def test_tasks_steps_prints_a_table_of_the_steps(sdk: Client, tmp_path: Path) -> None:
    task = finished_pipeline(sdk, tmp_path)
    result = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id)
    assert result.exit_code == 0, result.output
    header = blocks(result.stdout)[0][0]
    assert header.split() == STEP_HEADERS
    table = rows(result.stdout)
    assert [row["STEP"] for row in table] == PIPELINE
    assert [row["INPUT"] for row in table] == ["StartEvent", "Two", "Three", "Four", "Five"]
    assert [row["OUTCOME"] for row in table] == PIPELINE_OUTCOMES
    assert {row["ATTEMPT"] for row in table} == {"1"}
    assert all(row["STARTED"].endswith("+00:00") for row in table)
    assert all(row["DURATION"].endswith(" s") for row in table)
    # The same with -o table; -o json is the SDK's records, key for key
    assert on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id, "-o", "table").stdout
    as_json = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id, "-o", "json")
    assert as_json.exit_code == 0, as_json.output
    listed = json.loads(as_json.stdout)
    assert [set(s) for s in listed] == [{f.name for f in dataclasses.fields(Step)}] * 5
    assert [s["step"] for s in listed] == PIPELINE
    assert listed[0]["input"].endswith("StartEvent")


def test_tasks_steps_of_a_task_that_is_not_durable_says_why_there_are_none(
    sdk: Client,
) -> None:
    task = sdk.tasks.create(DEPLOYMENT, service="plain")
    sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE)
    result = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "service plain is not durable" in result.stderr
    as_json = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id, "-o", "json")
    assert json.loads(as_json.stdout) == []


def test_a_durable_task_with_no_step_ended_yet_says_so() -> None:
    task = Task.from_json(
        {
            "task_id": "t",
            "session_id": None,
            "service_id": "pipeline",
            "status": "queued",
            "controls": {"durable": True},
        }
    )
    assert _no_steps(task) == "No steps yet: none of this task's steps has ended."


def test_tasks_steps_of_an_unknown_task_fails(sdk: Client) -> None:
    result = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, "no-such-task")
    assert result.exit_code != 0
    assert "no-such-task" in result.output
    assert "Traceback" not in result.output


def test_tasks_get_and_list_show_a_parked_task(sdk: Client) -> None:
    parked = parked_ask(sdk)
    got = on(sdk.server, "tasks", "get", "-d", DEPLOYMENT, parked.task_id)
    assert got.exit_code == 0, got.output
    [row] = rows(got.stdout)
    assert row["STATUS"] == "waiting_input (parked)"
    [line] = [line for line in got.stdout.splitlines() if line.startswith("parked:")]
    assert "holds no worker" in line and "resumes it" in line
    listed = rows(on(sdk.server, "tasks", "list", "-d", DEPLOYMENT).stdout)
    assert [r["STATUS"] for r in listed if r["TASK"] == parked.task_id] == [
        "waiting_input (parked)"
    ]
    as_json = json.loads(
        on(sdk.server, "tasks", "get", "-d", DEPLOYMENT, parked.task_id, "-o", "json").stdout
    )
    assert as_json["parked_at"] is not None

    # Once answered, it is no longer parked
    sdk.tasks.send_event(DEPLOYMENT, parked.task_id, answer("no"), service="ask")
    sdk.tasks.wait(DEPLOYMENT, parked.task_id, timeout=DEADLINE)
    again = on(sdk.server, "tasks", "get", "-d", DEPLOYMENT, parked.task_id)
    [row] = rows(again.stdout)
    assert row["STATUS"] == "succeeded"
    assert "parked" not in again.stdout


def test_tasks_steps_names_the_run_once_a_task_ran_more_than_once(
    sdk: Client, server: Server, tmp_path: Path
) -> None:
    # Given a pipeline task cancelled while its third step holds, then retried
    log = tmp_path / "runs.log"
    hold = Path(f"{log}.hold")
    hold.touch()
    task = sdk.tasks.create(DEPLOYMENT, {"log": str(log), "pause": DEADLINE}, service="pipeline")
    poll(lambda: sdk.tasks.steps(DEPLOYMENT, task.task_id), lambda s: len(s) == 2)
    sdk.tasks.cancel(DEPLOYMENT, task.task_id)
    sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE)
    # (the task is cancelled at once; its worker stops the run when the word reaches it)
    poll(server.plane.celery.runtime.held, lambda held: task.task_id not in held)
    hold.unlink()
    sdk.tasks.retry(DEPLOYMENT, task.task_id)
    done = sdk.tasks.wait(DEPLOYMENT, task.task_id, timeout=DEADLINE)
    assert done.status == "succeeded", done
    steps = poll(
        lambda: sdk.tasks.steps(DEPLOYMENT, task.task_id),
        lambda s: s and s[-1].outcome == "returned StopEvent",
    )
    # When its steps are printed, then each row names its run
    result = on(sdk.server, "tasks", "steps", "-d", DEPLOYMENT, task.task_id)
    assert result.exit_code == 0, result.output
    assert blocks(result.stdout)[0][0].split() == ["RUN", *STEP_HEADERS]
    table = rows(result.stdout)
    assert [(row["RUN"], row["STEP"]) for row in table] == [(str(s.run), s.step) for s in steps]
    assert [row["STEP"] for row in table if row["RUN"] == "1"] == ["one", "two"]
    assert [row["STEP"] for row in table if row["RUN"] == "2"][-1] == "five"
