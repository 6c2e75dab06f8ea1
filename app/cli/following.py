"""Following a task's events as they come, and answering the questions it asks.

A workflow asks a person with an ``InputRequiredEvent`` and waits for a
``HumanResponseEvent``. On a terminal the CLI asks the question (the event's ``prefix``) and
sends the answer; otherwise it prints the command that answers it and follows on. An event of
another class with a ``prefix`` asks too if the task awaits input (a workflow's own subclass
of ``InputRequiredEvent``); as such a workflow may wait for its own class of answer, the CLI
then prints the command to answer it, to be completed with that class.
"""

from __future__ import annotations

import json

import click

from app.cli.context import CliState
from app.cli.terminal import can_ask
from app.sdk import Client, EventItem, Task, TaskEnded

#: The event every run ends with; its result is printed on its own after the events.
STOP_EVENT = "workflows.events.StopEvent"
#: What a person's answer is sent as.
HUMAN_RESPONSE = "workflows.events.HumanResponseEvent"
#: The class name of the event that asks.
INPUT_REQUIRED = "InputRequiredEvent"


def serialized_event(qualified_name: str, fields: dict[str, object]) -> str:
    """An event in llama-index's JsonSerializer form, which the workers read back."""
    return json.dumps({"__is_pydantic": True, "value": fields, "qualified_name": qualified_name})


def follow(
    state: CliState,
    client: Client,
    deployment: str,
    task_id: str,
    *,
    timeout: float | None,
    last_event_id: int | None = None,
) -> Task:
    """Print a task's events (one line each: type and JSON fields) until its end, answering
    its questions on the way; return the task."""
    with client.tasks.events(
        deployment, task_id, last_event_id=last_event_id, timeout=timeout
    ) as events:
        for item in events:
            if item.qualified_name == STOP_EVENT:
                continue
            click.echo(f"{item.type} {json.dumps(item.data, default=str)}")
            # A question is stored with the task's status before it is streamed: one the
            # task no longer awaits (a replay, by ``tasks watch``) was answered already.
            if _asks(item) and client.tasks.get(deployment, task_id).status == "waiting_input":
                _answer(state, client, deployment, task_id, item)
    return client.tasks.get(deployment, task_id)


def _asks(item: EventItem) -> bool:
    """Whether an event asks a person: an ``InputRequiredEvent``, or an event with a
    ``prefix`` (the question, by the convention of its subclasses)."""
    return item.type == INPUT_REQUIRED or "prefix" in item.data


def _answer(
    state: CliState, client: Client, deployment: str, task_id: str, item: EventItem
) -> None:
    """Ask the question and send the answer; off a terminal, or for a question of the
    workflow's own class, say how to answer it."""
    question = str(item.data.get("prefix") or "").strip() or "Your answer"
    if item.type != INPUT_REQUIRED or not can_ask():
        command = state.command(
            "tasks",
            "send-event",
            "-d",
            deployment,
            task_id,
            "--type",
            "HumanResponseEvent",
            "--data",
            '{"response": "ANSWER"}',
        )
        own = (
            ""
            if item.type == INPUT_REQUIRED
            else f" (or the answer class {item.type} waits for, if not HumanResponseEvent)"
        )
        click.echo(f"Task {task_id} asks: {question}\nAnswer it with{own}:\n  {command}", err=True)
        return
    answer = click.prompt(question, err=True)
    try:
        client.tasks.send_event(
            deployment, task_id, serialized_event(HUMAN_RESPONSE, {"response": answer})
        )
    except TaskEnded:
        click.echo(f"Task {task_id} ended before the answer reached it.", err=True)
