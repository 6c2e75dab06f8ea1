"""Tests of the service runtime: running workflows and reporting their progress and outcome."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from config.deployment import DeploymentSpec, load_deployment, load_deployment_file
from tests.conftest import HITL, MULTISTEP
from tests.workers.conftest import (
    RecordingReporter,
    run_step,
    unique_name,
    write_file,
    write_workflow,
)
from workers import runtime as runtime_module
from workers.errors import HandedBack, ResultTooLarge
from workers.protocol import DeliverEvent, StepEvent, StepFinished, StepStarted
from workers.runtime import ResultBounds, ServiceRuntime
from workers.stops import Stops


def local_deployment(
    name: str = "Dep", services: tuple[str, ...] = ("svc",), **yaml: str
) -> DeploymentSpec:
    """A deployment whose services all load ``workflow:wf`` from ``./src``.

    ``yaml`` maps a service id to extra YAML lines for that service (indented by the caller).
    """
    body = "".join(
        f"  {sid}:\n"
        f"    name: {sid}\n"
        "    source: {type: local, name: ./src}\n"
        "    path: workflow:wf\n" + yaml.get(sid, "")
        for sid in services
    )
    return load_deployment(f"name: {name}\ncontrol-plane: {{}}\nservices:\n{body}")


def install(runtime: ServiceRuntime, tmp_path: Path, result: str, **kwargs: str) -> DeploymentSpec:
    """Write a workflow answering ``result`` under ``tmp_path/src`` and serve it."""
    write_workflow(tmp_path / "src", result, preamble=kwargs.pop("preamble", ""))
    spec = local_deployment(**kwargs)
    runtime.install(spec, tmp_path)
    return spec


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grace period no quick test run can outlast, so "quick" does not depend on the host."""
    monkeypatch.setattr(runtime_module, "STARTED_GRACE", 5.0)


def test_successful_run_reports_events_in_order_then_the_outcome(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    # Given a workflow that streams three progress events and answers
    install(runtime, tmp_path, '"all good"')
    step = run_step("Dep", "svc", events=3)
    # When it runs
    outcome = runtime.run(step, reporter)
    # Then the start came before the first event (so whoever sees it can reach the
    # worker), then the events in order, then one outcome
    assert reporter.kinds == ["started", "event", "event", "event", "finished"]
    events = reporter.events
    assert [e.seq for e in events] == [0, 1, 2]
    assert [e.event["data"]["n"] for e in events] == [0, 1, 2]
    assert all(e.event["type"] == "Progress" for e in events)
    assert all(e.task_id == step.task_id for e in events)
    # And the outcome carries the result, the count and the held StopEvent
    assert reporter.finished_messages == [outcome]
    assert outcome.ok is True
    assert outcome.result == "all good"
    assert outcome.error is None
    assert outcome.task_id == step.task_id
    assert outcome.event_count == 4
    assert outcome.started_reported is True
    assert outcome.worker == "test-worker"
    assert outcome.started_at <= outcome.at
    held = [StepEvent.decode(e) for e in outcome.events]
    assert [e.seq for e in held] == [3]
    assert held[0].event["type"] == "StopEvent"
    assert held[0].task_id == step.task_id
    # And the outcome is a valid protocol message
    assert StepFinished.decode(json.loads(json.dumps(outcome.encode()))) == outcome


def test_run_longer_than_the_grace_reports_its_start_first(
    runtime: ServiceRuntime,
    reporter: RecordingReporter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a workflow that works for well over the grace period before streaming
    monkeypatch.setattr(runtime_module, "STARTED_GRACE", 0.04)
    install(runtime, tmp_path, '"slow"')
    sleep = 0.2
    # When it runs
    outcome = runtime.run(run_step("Dep", "svc", sleep=sleep, events=1), reporter)
    # Then the start was reported first, and the outcome says so
    assert reporter.kinds == ["started", "event", "finished"]
    started = reporter.messages[0][1]
    assert started.worker == "test-worker"
    assert started.at == outcome.started_at
    assert outcome.started_reported is True
    assert outcome.ok is True
    assert outcome.result == "slow"


def test_failing_workflow_reports_its_error_with_a_traceback(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    # Given a workflow that raises after streaming one event
    install(runtime, tmp_path, '"never"')
    # When it runs
    outcome = runtime.run(run_step("Dep", "svc", events=1, fail="ValueError"), reporter)
    # Then a StepFinished still comes, with the error described
    assert reporter.kinds[-1] == "finished"
    assert reporter.finished_messages == [outcome]
    assert outcome.ok is False
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error["type"] == "builtins.ValueError"
    assert outcome.error["message"] == "the workflow failed on purpose"
    assert "Traceback" in outcome.error["traceback"]
    assert "the workflow failed on purpose" in outcome.error["traceback"]
    assert reporter.events[0].event["type"] == "Progress"


def test_quick_run_failing_with_a_timeout_error_still_reports_no_start(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    # Given a workflow that fails at once with TimeoutError (what asyncio.wait_for raises)
    install(runtime, tmp_path, '"never"')
    # When it runs
    outcome = runtime.run(run_step("Dep", "svc", fail="TimeoutError"), reporter)
    # Then its own error is reported, and only once the run is over: it never "started late"
    assert outcome.ok is False
    assert outcome.error is not None
    assert outcome.error["type"] == "builtins.TimeoutError"
    assert outcome.error["message"] == "the workflow failed on purpose"
    assert reporter.kinds == ["finished"]
    assert outcome.started_reported is False


@pytest.mark.parametrize(
    ("deployment", "service", "named"),
    [("Nowhere", "svc", "'Nowhere'"), ("Dep", "ghost", "'ghost'")],
)
def test_unknown_deployment_or_service_is_an_error_without_traceback(
    runtime: ServiceRuntime,
    reporter: RecordingReporter,
    tmp_path: Path,
    deployment: str,
    service: str,
    named: str,
) -> None:
    # Given a runtime that serves Dep/svc only
    install(runtime, tmp_path, '"x"')
    # When a step names something else
    outcome = runtime.run(run_step(deployment, service), reporter)
    # Then the outcome is an error that names it, with no user traceback
    assert reporter.kinds == ["finished"]
    assert outcome.ok is False
    assert outcome.error is not None
    assert named in outcome.error["message"]
    assert outcome.error["type"] == "workers.errors.UnknownDeployment"
    assert "traceback" not in outcome.error
    assert outcome.event_count == 0


def test_workflow_that_cannot_load_is_an_error_without_traceback(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path
) -> None:
    write_file(tmp_path / "src" / "workflow.py", "wf = 'not a workflow'\n")
    runtime.install(local_deployment(), tmp_path)
    outcome = runtime.run(run_step("Dep", "svc"), reporter)
    assert outcome.ok is False
    assert outcome.error is not None
    assert outcome.error["type"] == "workers.errors.WorkflowLoadError"
    assert "not a workflows.Workflow" in outcome.error["message"]
    assert "traceback" not in outcome.error


def test_pydantic_and_dict_results_become_json(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    # Given a workflow answering a dict that holds a pydantic model and non-JSON values
    preamble = (
        "import datetime\n"
        "import pydantic\n\n\n"
        "class Answer(pydantic.BaseModel):\n"
        "    text: str\n"
        "    score: float\n\n\n"
        "class Opaque:\n"
        "    def __str__(self) -> str:\n"
        "        return 'opaque'\n"
    )
    result = (
        '{"answer": Answer(text="hi", score=0.5), "when": datetime.date(2024, 1, 2), '
        '"tags": ("a", "b"), "other": Opaque()}'
    )
    install(runtime, tmp_path, result, preamble=preamble)
    # When it runs
    outcome = runtime.run(run_step("Dep", "svc"), reporter)
    # Then the result is plain JSON
    assert outcome.ok is True, outcome.error
    assert json.loads(json.dumps(outcome.result)) == outcome.result
    assert outcome.result["answer"] == {"text": "hi", "score": 0.5}
    assert outcome.result["when"] == "2024-01-02"
    assert outcome.result["tags"] == ["a", "b"]
    assert outcome.result["other"] == "opaque"


def test_pydantic_model_result_becomes_an_object(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    preamble = "import pydantic\n\n\nclass Answer(pydantic.BaseModel):\n    text: str\n"
    install(runtime, tmp_path, 'Answer(text="model")', preamble=preamble)
    outcome = runtime.run(run_step("Dep", "svc"), reporter)
    assert outcome.ok is True, outcome.error
    assert outcome.result == {"text": "model"}


def test_multistep_example_streams_its_progress_in_order(
    runtime: ServiceRuntime, reporter: RecordingReporter
) -> None:
    # Given the multistep example deployment
    spec = load_deployment_file(MULTISTEP)
    runtime.install(spec, MULTISTEP.parent)
    # When it runs
    outcome = runtime.run(run_step("MultiStep", "streaming_workflow", message="go"), reporter)
    # Then its three progress reports arrived in order, then the result
    assert outcome.ok is True, outcome.error
    progress = [e.event["data"]["progress"] for e in reporter.events]
    assert progress == [0.3, 0.6, 0.9]
    assert [e.seq for e in reporter.events] == [0, 1, 2]
    assert outcome.result == "go_result_result_result"
    assert outcome.event_count == 4


ENV_WORKFLOW = """\
import asyncio
import os
import time

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class EnvWorkflow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        start = time.monotonic()
        before = os.environ.get(ev.get("name"))
        await asyncio.sleep(ev.get("sleep"))
        after = os.getenv(ev.get("name"))
        result = {"before": before, "after": after, "start": start, "end": time.monotonic()}
        return StopEvent(result=result)


wf = EnvWorkflow(timeout=30)
"""


def test_two_services_see_their_own_env_while_running_concurrently(
    runtime: ServiceRuntime, tmp_path: Path
) -> None:
    # Given two services of one deployment that set the same variable differently
    variable = unique_name()
    write_file(tmp_path / "src" / "workflow.py", ENV_WORKFLOW)
    spec = local_deployment(
        services=("first", "second"),
        first=f"    env: {{{variable}: one}}\n",
        second=f"    env: {{{variable}: two}}\n",
    )
    runtime.install(spec, tmp_path)
    outcomes: dict[str, StepFinished] = {}

    def call(service: str) -> None:
        step = run_step("Dep", service, name=variable, sleep=0.2)
        outcomes[service] = runtime.run(step, RecordingReporter())

    threads = [threading.Thread(target=call, args=(s,)) for s in ("first", "second")]
    # When both run at the same time on the runtime's one event loop
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # Then each saw its own value, before and after the other one ran
    first, second = outcomes["first"], outcomes["second"]
    assert first.ok and second.ok, (first.error, second.error)
    assert (first.result["before"], first.result["after"]) == ("one", "one")
    assert (second.result["before"], second.result["after"]) == ("two", "two")
    # And the two runs did overlap, while the variable never leaked out of them
    assert first.result["start"] < second.result["end"]
    assert second.result["start"] < first.result["end"]
    assert variable not in os.environ


def test_loaded_service_is_cached(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    install(runtime, tmp_path, '"cached"')
    first = runtime.load("Dep", "svc")
    assert runtime.load("Dep", "svc") is first
    assert runtime.served() == ["Dep"]
    runtime.remove("Dep")
    assert runtime.served() == []
    assert runtime.run(run_step("Dep", "svc"), reporter).ok is False


def _asked(reporter: RecordingReporter, task_id: str, timeout: float = 10.0) -> None:
    """Wait until the task streamed its InputRequiredEvent."""
    deadline = time.monotonic() + timeout
    while not any(e.task_id == task_id and e.event["input_required"] for e in reporter.events):
        assert time.monotonic() < deadline, "the task never asked for input"
        time.sleep(0.01)


def test_hand_back_stops_only_the_runs_waiting_for_an_answer(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path
) -> None:
    # Given a run waiting for a human, a run that was answered, and a run that computes
    runtime.install(load_deployment_file(HITL), HITL.parent)
    install(runtime, tmp_path, '"computed"', name="Busy")
    waiting = run_step("HumanInTheLoop", "ask")
    answered = run_step("HumanInTheLoop", "ask")
    busy = run_step("Busy", "svc", sleep="1.0")
    with ThreadPoolExecutor(3) as pool:
        runs: dict[str, Future[StepFinished]] = {
            s.task_id: pool.submit(runtime.run, s, reporter) for s in (waiting, answered, busy)
        }
        _asked(reporter, waiting.task_id)
        _asked(reporter, answered.task_id)
        answer = JsonSerializer().serialize(HumanResponseEvent(response="42"))  # type: ignore[call-arg]
        runtime.deliver(DeliverEvent(task_id=answered.task_id, seq=0, event=answer))
        # When the worker hands back its runs
        stopped = runtime.hand_back()
        # Then only the waiting one stopped, reporting no outcome, to be run again
        assert stopped == 1
        with pytest.raises(HandedBack):
            runs[waiting.task_id].result(timeout=10)
        assert runs[answered.task_id].result(timeout=10).result == "42"
        assert runs[busy.task_id].result(timeout=10).result == "computed"
    ended = {m.task_id for kind, m in reporter.messages if kind == "finished"}
    assert ended == {answered.task_id, busy.task_id}


class _HeldWhenReported(RecordingReporter):
    """Notes, at each report, which tasks the runtime held then."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__()
        self.runtime = runtime
        self.held: list[list[str]] = []

    def started(self, message: StepStarted) -> None:
        self.held.append(self.runtime.held())
        super().started(message)

    def finished(self, message: StepFinished) -> None:
        self.held.append(self.runtime.held())
        super().finished(message)


def test_a_task_is_held_from_its_start_until_its_outcome_is_sent(
    runtime: ServiceRuntime, tmp_path: Path, quick: None
) -> None:
    # Given a workflow that streams an event (so its start is reported) and answers
    install(runtime, tmp_path, '"done"')
    step = run_step("Dep", "svc", events=1)
    reporter = _HeldWhenReported(runtime)
    # When it runs
    runtime.run(step, reporter)
    # Then heartbeats sent while it ran, up to its outcome's sending, list it; none after
    assert reporter.held == [[step.task_id], [step.task_id]]
    assert runtime.held() == []


def test_a_service_is_announced_once_per_version_before_its_first_run(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path
) -> None:
    # Given a runtime that tells the control plane what a workflow is (its declared events)
    announced: list[tuple[str, str, int, list[str]]] = []
    runtime.announce = lambda d, s, v, loaded: announced.append(
        (d, s, v, sorted(cls.__name__ for cls in loaded.workflow.events))
    )
    install(runtime, tmp_path, '"done"')
    # When it runs three steps, the third of a newer version
    runtime.run(run_step("Dep", "svc"), reporter)
    runtime.run(run_step("Dep", "svc"), reporter)
    newer = dataclasses.replace(run_step("Dep", "svc"), version=2)
    runtime.run(newer, reporter)
    # Then it announced each version once, before running it
    assert [a[:3] for a in announced] == [("Dep", "svc", 1), ("Dep", "svc", 2)]
    assert "StartEvent" in announced[0][3]


def test_a_result_over_the_bounds_fails_the_run(
    reporter: RecordingReporter, tmp_path: Path
) -> None:
    runtime = ServiceRuntime(tmp_path / "sources", result_bounds=ResultBounds(100, 3))
    try:
        install(runtime, tmp_path, '"x" * 200')
        too_big = runtime.run(run_step("Dep", "svc"), reporter)
    finally:
        runtime.close()
    assert (too_big.ok, too_big.result) == (False, None)
    assert too_big.error == {
        "type": "workers.errors.ResultTooLarge",
        "message": "the workflow's result is 202 bytes of JSON; results may have at most 100 "
        "(CELERIAC_MAX_RESULT_BYTES)",
    }
    # And its StopEvent, which would carry the result to the stream, says why it does not
    [stop] = too_big.events
    assert stop["event"]["type"] == "StopEvent"
    assert stop["event"]["data"] == {
        "celeriac_omitted": "the data of streamed event StopEvent is 213 bytes of JSON; "
        "streamed events may have at most 100 (CELERIAC_MAX_RESULT_BYTES)"
    }


def test_streamed_events_over_the_bounds_are_sent_without_their_data_and_the_run_goes_on(
    reporter: RecordingReporter, tmp_path: Path, quick: None
) -> None:
    # Given a runtime where 6 bytes of JSON is the most a result or a streamed event holds
    runtime = ServiceRuntime(tmp_path / "sources", result_bounds=ResultBounds(6, 3))
    try:
        # When a run streams two events of 7 bytes ({"n":0}) and answers 4 bytes ("ok")
        install(runtime, tmp_path, '"ok"')
        outcome = runtime.run(run_step("Dep", "svc", events=2), reporter)
    finally:
        runtime.close()
    # Then it succeeds, and each event went on with its type and why its data did not
    assert (outcome.ok, outcome.result) == (True, "ok")
    why = (
        "the data of streamed event Progress is 7 bytes of JSON; streamed events may have at "
        "most 6 (CELERIAC_MAX_RESULT_BYTES)"
    )
    assert [(e.seq, e.event["type"], e.event["data"]) for e in reporter.events] == [
        (0, "Progress", {"celeriac_omitted": why}),
        (1, "Progress", {"celeriac_omitted": why}),
    ]


def test_a_result_nested_past_the_bound_fails_the_run(tmp_path: Path) -> None:
    with pytest.raises(ResultTooLarge, match="nested deeper than 3 levels"):
        ResultBounds(1_000, 3).check([[[[1]]]])
    ResultBounds(1_000, 3).check([[[1]]])


def test_a_run_waiting_for_the_stopped_runs_goes_back_to_the_queue_when_the_worker_stops(
    runtime: ServiceRuntime, reporter: RecordingReporter, tmp_path: Path
) -> None:
    # Given a worker that (re)connected and has not yet heard which runs are stopped
    install(runtime, tmp_path, '"done"')
    runtime.stops.unknown()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run(run_step("Dep", "svc"), reporter)
        except BaseException as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=run)
    waiting.start()
    time.sleep(0.1)
    assert waiting.is_alive()
    # When the worker stops (its hand-back step runs before its pool stops)
    runtime.hand_back()
    waiting.join(timeout=5)
    # Then the run gives up at once without starting, and its step goes back to the queue
    assert not waiting.is_alive()
    assert [type(exc) for exc in outcome] == [HandedBack]
    assert reporter.kinds == []


def test_a_run_that_gets_no_list_of_stopped_runs_gives_up_after_the_patience() -> None:
    # Given a worker that asked for the list of stopped runs, and no control plane to answer
    stops = Stops(patience=0.3)
    stops.unknown()
    # When a run waits for it
    began = time.monotonic()
    known = stops.wait_known(warn_every=0.1)
    # Then it gives up after the patience, and is told not to start
    assert known is False
    assert 0.25 <= time.monotonic() - began < 2
    # And once the list comes, runs start at once
    stops.note([["t1", 1]], "cancelled", complete=True)
    assert stops.wait_known() is True
    assert stops.reason("t1", 1) == "cancelled"


def test_after_a_workers_stop_a_run_that_begins_to_wait_for_the_list_gives_up_at_once() -> None:
    # Given a worker whose list of stopped runs is unknown, which then stops
    stops = Stops(patience=30)
    stops.unknown()
    stops.release()
    # When a step its pool had not started yet begins to wait for the list
    began = time.monotonic()
    known = stops.wait_known()
    # Then it gives up at once (its step goes back to the queue)
    assert known is False
    assert time.monotonic() - began < 1
    # And once the worker asks for the list again (it starts again), runs wait for it
    stops.unknown()
    waiter: list[bool] = []
    thread = threading.Thread(target=lambda: waiter.append(stops.wait_known()))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    stops.note([], "", complete=True)
    thread.join(timeout=5)
    assert waiter == [True]
