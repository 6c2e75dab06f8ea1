"""Tests of the message protocol: encoding, decoding, errors, queue names and summaries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workers.errors import ProtocolError
from workers.protocol import (
    PROTOCOL_VERSION,
    Message,
    RunStep,
    StepEvent,
    StepFinished,
    StepStarted,
    service_queue,
)


def _run_step(**changes: Any) -> RunStep:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "session_id": "s-1",
        "deployment": "QuickStart",
        "service": "echo_workflow",
        "input": {"message": "hello", "nested": {"n": [1, 2]}},
    }
    return RunStep(**{**fields, **changes})


MESSAGES: list[Message] = [
    _run_step(),
    StepStarted(task_id="t-1", worker="w@host", at=1700000000.5),
    StepEvent(
        task_id="t-1",
        seq=3,
        event={"type": "Progress", "qualified_name": "m.Progress", "data": {"n": 3}},
        at=1700000001.0,
    ),
    StepFinished(
        task_id="t-1",
        ok=True,
        result={"answer": [1, "two", None]},
        error=None,
        event_count=2,
        events=[{"seq": 1, "event": {"type": "StopEvent"}}],
        worker="w@host",
        started_at=1700000000.5,
        started_reported=False,
        at=1700000002.0,
    ),
    StepFinished(
        task_id="t-2",
        ok=False,
        result=None,
        error={"type": "builtins.ValueError", "message": "boom", "traceback": "..."},
        event_count=0,
        events=[],
        worker="w@host",
        started_at=1.0,
        started_reported=True,
        at=2.0,
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_json_round_trip(message: Message) -> None:
    # Given a message encoded and sent through JSON, as the broker carries it
    wire = json.loads(json.dumps(message.encode()))
    # When it is decoded by its class
    decoded = type(message).decode(wire)
    # Then it is the same message, id and version included
    assert decoded == message
    assert decoded.id == message.id
    assert wire["v"] == PROTOCOL_VERSION


def test_every_message_gets_its_own_id() -> None:
    assert _run_step().id != _run_step().id


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, "1"])
def test_decoding_another_protocol_version_is_refused(version: object) -> None:
    data = {**_run_step().encode(), "v": version}
    with pytest.raises(ProtocolError, match="version"):
        RunStep.decode(data)


@pytest.mark.parametrize("data", [None, [], "a string", 42])
def test_decoding_something_that_is_not_an_object_is_refused(data: Any) -> None:
    with pytest.raises(ProtocolError, match="RunStep"):
        RunStep.decode(data)


def test_decoding_without_a_required_field_is_refused() -> None:
    # Given an encoded step whose deployment went missing
    data = _run_step().encode()
    del data["deployment"]
    # When / Then decoding names the problem
    with pytest.raises(ProtocolError, match="deployment"):
        RunStep.decode(data)


@pytest.mark.parametrize("missing", ["id", "task_id", "session_id", "service", "input"])
def test_decoding_without_any_field_but_the_version_is_refused(missing: str) -> None:
    # A message without its id would get a fresh one, and redeliveries would no longer be
    # recognised as the same message: the id is as required as any other field.
    data = _run_step().encode()
    del data[missing]
    with pytest.raises(ProtocolError, match=missing):
        RunStep.decode(data)


def test_decoding_ignores_unknown_keys() -> None:
    # Given a message from a newer sender that added a field
    message = StepStarted(task_id="t-1", worker="w", at=1.0)
    data = {**message.encode(), "added_later": {"x": 1}}
    # When it is decoded
    decoded = StepStarted.decode(data)
    # Then the known fields come through and the extra one is dropped
    assert decoded == message
    assert not hasattr(decoded, "added_later")


def test_service_queue_follows_the_naming_scheme() -> None:
    assert service_queue("QuickStart", "echo_workflow") == "celeriac.QuickStart.echo_workflow"
    assert service_queue("a", "b") != service_queue("a", "c")


def test_summary_is_short_and_names_deployment_service_and_task() -> None:
    # Given a step with a large input
    step = _run_step(task_id="task-42", input={"blob": "x" * 10_000})
    # When it is summarised for monitoring
    summary = step.summary()
    # Then the summary names what matters and leaves the input out
    assert "QuickStart" in summary
    assert "echo_workflow" in summary
    assert "task-42" in summary
    assert "xxxxxxxxxx" not in summary
    assert len(summary) < 200


def test_summary_of_an_outcome_names_the_task_and_whether_it_succeeded() -> None:
    finished = MESSAGES[4]
    summary = finished.summary()
    assert "t-2" in summary
    assert "ok=False" in summary
    assert "boom" not in summary
