"""``celeriac run`` and ``celeriac tasks ...``: run tasks, follow their events, answer them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import click

from app.cli.context import CliState, echo_json, pass_state, reporting_errors
from app.sdk import Client, MultitaskStrategy, Task

#: The event every run ends with; its result is printed on its own after the events.
STOP_EVENT = "workflows.events.StopEvent"

deployment_option = click.option("-d", "--deployment", required=True, help="Deployment name.")


@click.command()
@deployment_option
@click.option(
    "-a",
    "--arg",
    "args",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="A keyword argument of the run (repeatable; values are strings).",
)
@click.option("-s", "--service", help="Service id [default: the deployment's default-service].")
@click.option("-i", "--session-id", help="Run in this session.")
@click.option(
    "--multitask-strategy",
    type=click.Choice(["enqueue", "reject"]),
    help="If the session is busy: queue the task [default] or refuse it.",
)
@click.option(
    "--stream", is_flag=True, help="Print each event as it arrives (type, JSON), then the result."
)
@click.option("--timeout", type=float, help="Seconds to wait for the result.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Run the task at most once under KEY: the same run again under it (after a lost "
    "answer) gets the first run's task and result.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(0, min_open=True),
    metavar="SECONDS",
    help="Stop the task's run after SECONDS (it ends timed_out) [default: the service's].",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0, min_open=True),
    metavar="SECONDS",
    help="End the task timed_out if it has not started within SECONDS [default: the service's].",
)
@pass_state
def run(
    state: CliState,
    deployment: str,
    args: tuple[tuple[str, str], ...],
    service: str | None,
    session_id: str | None,
    multitask_strategy: MultitaskStrategy | None,
    stream: bool,
    timeout: float | None,
    idempotency_key: str | None,
    time_limit: float | None,
    queue_timeout: float | None,
) -> None:
    """Run a task and print its result."""
    with reporting_errors(), state.client() as client:
        if not stream:
            result = client.tasks.run(
                deployment,
                dict(args),
                service=service,
                session_id=session_id,
                multitask_strategy=multitask_strategy,
                timeout=timeout,
                idempotency_key=idempotency_key,
                time_limit=time_limit,
                queue_timeout=queue_timeout,
            )
            echo_json(result)
            return
        task = client.tasks.create(
            deployment,
            dict(args),
            service=service,
            session_id=session_id,
            multitask_strategy=multitask_strategy,
            idempotency_key=idempotency_key,
            time_limit=time_limit,
            queue_timeout=queue_timeout,
        )
        task = _follow(client, deployment, task.task_id, timeout=timeout)
    _report(task)


@click.group("tasks")
def tasks_group() -> None:
    """List, read, follow, cancel and retry tasks, and send events into them."""


@tasks_group.command("list")
@deployment_option
@click.option("-i", "--session-id", help="Only this session's tasks.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@pass_state
def list_tasks(
    state: CliState, deployment: str, session_id: str | None, limit: int, offset: int
) -> None:
    """List tasks with their status."""
    with reporting_errors(), state.client() as client:
        tasks = client.tasks.list(deployment, session_id=session_id, limit=limit, offset=offset)
    for task in tasks:
        click.echo(f"{task.task_id}  {task.status:<13} {task.service_id}  {task.created_at}")


@tasks_group.command("get")
@deployment_option
@click.argument("task_id")
@pass_state
def get(state: CliState, deployment: str, task_id: str) -> None:
    """Show a task: status, result or error, timestamps, and each run (JSON)."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.tasks.get(deployment, task_id)))


@tasks_group.command("retry")
@deployment_option
@click.argument("task_id")
@pass_state
def retry(state: CliState, deployment: str, task_id: str) -> None:
    """Run a task that failed, timed out or was cancelled again, as a new run with the same
    id (JSON of the task)."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.tasks.retry(deployment, task_id)))


@tasks_group.command("cancel")
@deployment_option
@click.argument("task_id")
@pass_state
def cancel(state: CliState, deployment: str, task_id: str) -> None:
    """Cancel a task that has not ended: a queued one never starts, a running one is
    stopped (JSON of the task)."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.tasks.cancel(deployment, task_id)))


@tasks_group.command("attempts")
@deployment_option
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@pass_state
def attempts(state: CliState, deployment: str, task_id: str, as_json: bool) -> None:
    """Show each run of a task: worker, start, end, outcome and error."""
    with reporting_errors(), state.client() as client:
        runs = client.tasks.attempts(deployment, task_id)
    if as_json:
        echo_json([dataclasses.asdict(run) for run in runs])
        return
    rows = [("#", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR")]
    rows += [
        (
            str(run.attempt),
            run.worker,
            _when(run.started_at),
            _when(run.finished_at),
            run.outcome or "running",
            _reason(run.error),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _when(moment: dt.datetime | None) -> str:
    """A timestamp to the millisecond, in UTC; ``-`` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _reason(error: dict[str, Any] | None) -> str:
    """An error's type and message on one line."""
    if not error:
        return ""
    kind = str(error.get("type") or "").rsplit(".", 1)[-1]
    message = str(error.get("message") or "")
    return f"{kind}: {message}" if kind else message


@tasks_group.command("watch")
@deployment_option
@click.argument("task_id")
@click.option(
    "--last-event-id", type=click.IntRange(-1), help="Start after this event [default: all]."
)
@click.option("--timeout", type=float, help="Seconds to follow at most [default: to the end].")
@pass_state
def watch(
    state: CliState,
    deployment: str,
    task_id: str,
    last_event_id: int | None,
    timeout: float | None,
) -> None:
    """Follow a task's events until it ends, then print its status and result."""
    with reporting_errors(), state.client() as client:
        task = _follow(client, deployment, task_id, timeout=timeout, last_event_id=last_event_id)
    click.echo(f"status: {task.status}")
    _report(task)


@tasks_group.command("send-event")
@deployment_option
@click.argument("task_id")
@click.option("--event", "event_json", help="The event as llama-index's JsonSerializer writes it.")
@click.option(
    "--type",
    "event_type",
    help="The event's class name or qualified name, e.g. HumanResponseEvent; one the "
    "task's workflow takes.",
)
@click.option("--data", help="With --type: the event's fields as a JSON object [default: {}].")
@click.option("-s", "--service", help="Service id [default: the task's].")
@pass_state
def send_event(
    state: CliState,
    deployment: str,
    task_id: str,
    event_json: str | None,
    event_type: str | None,
    data: str | None,
    service: str | None,
) -> None:
    """Send an event (a HumanResponseEvent, say) into a running task."""
    event = _event_obj_str(event_json, event_type, data)
    with reporting_errors(), state.client() as client:
        client.tasks.send_event(deployment, task_id, event, service=service)
    click.echo(f"Sent {event_type or 'the event'} to task {task_id}")


def _follow(
    client: Client,
    deployment: str,
    task_id: str,
    *,
    timeout: float | None,
    last_event_id: int | None = None,
) -> Task:
    """Print a task's events (one line each: type and JSON fields) until its end; return it."""
    with client.tasks.events(
        deployment, task_id, last_event_id=last_event_id, timeout=timeout
    ) as events:
        for item in events:
            if item.qualified_name != STOP_EVENT:
                click.echo(f"{item.type} {json.dumps(item.data, default=str)}")
    return client.tasks.get(deployment, task_id)


def _report(task: Task) -> None:
    """Print an ended task's result; a task that did not succeed is an error."""
    if task.status == "succeeded":
        echo_json(task.result)
        return
    error = task.error or {}
    reason = error.get("message") or task.status
    kind = str(error.get("type") or "").rsplit(".", 1)[-1]
    raise click.ClickException(
        f"task {task.task_id} {task.status}: {kind + ': ' if kind else ''}{reason}"
    )


def _event_obj_str(event_json: str | None, event_type: str | None, data: str | None) -> str:
    """The event to send, from ``--event`` or from ``--type`` and ``--data``."""
    if (event_json is None) == (event_type is None):
        raise click.UsageError("give either --event or --type (with --data)")
    if event_json is not None:
        if data is not None:
            raise click.UsageError("--data goes with --type, not with --event")
        return event_json
    fields: Any = {}
    if data is not None:
        try:
            fields = json.loads(data)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
        if not isinstance(fields, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
    # llama-index's JsonSerializer form of a pydantic event, which the workers read back.
    return json.dumps({"__is_pydantic": True, "value": fields, "qualified_name": event_type})
