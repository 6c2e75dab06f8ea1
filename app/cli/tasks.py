"""``celeriac tasks ...``: list and read tasks (their runs, and a durable task's steps), follow
them, cancel and retry them, and send events into them."""

from __future__ import annotations

import json
from typing import Any

import click

from app.cli.completion import deployment_option
from app.cli.context import CliState, echo_json, pass_state, reporting_errors
from app.cli.failures import error_lines, report
from app.cli.following import follow, serialized_event
from app.cli.output import Output, between, duration, echo_table, output_option, when
from app.cli.run import traceback_option
from app.sdk import Step, Task


@click.group("tasks")
def tasks_group() -> None:
    """List, read, follow, cancel and retry tasks, and send events into them."""


@tasks_group.command("list")
@deployment_option
@click.option("-i", "--session-id", help="Only this session's tasks.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@output_option
@pass_state
def list_tasks(
    state: CliState,
    deployment: str,
    session_id: str | None,
    limit: int,
    offset: int,
    output: Output,
) -> None:
    """List tasks, oldest first: status, service, session, when and how long."""
    with reporting_errors(), state.client() as client:
        tasks = client.tasks.list(deployment, session_id=session_id, limit=limit, offset=offset)
    if output == "json":
        echo_json(tasks)
        return
    echo_table(_TASK_HEADERS, [_task_row(task) for task in tasks], empty="No tasks.")


_TASK_HEADERS = ("TASK", "STATUS", "SERVICE", "SESSION", "CREATED", "DURATION")


def _task_row(task: Task) -> tuple[str, ...]:
    return (
        task.task_id,
        _status(task),
        task.service_id,
        task.session_id or "",
        when(task.created_at),
        between(task.started_at, task.finished_at),
    )


def _status(task: Task) -> str:
    """A task's status, and ``(parked)`` while its run holds no worker."""
    return f"{task.status} (parked)" if task.parked else task.status


@tasks_group.command("get")
@deployment_option
@click.argument("task_id")
@output_option
@traceback_option
@pass_state
def get(
    state: CliState, deployment: str, task_id: str, output: Output, show_traceback: bool
) -> None:
    """Show a task: status, times, input, and its result or its error (with the workflow's
    frame that raised it); ``tasks attempts`` shows each run."""
    with reporting_errors(), state.client() as client:
        task = client.tasks.get(deployment, task_id)
    if output == "json":
        echo_json(task)
        return
    echo_table(
        (*_TASK_HEADERS, "RUN", "ATTEMPTS"), [(*_task_row(task), str(task.run), str(task.attempts))]
    )
    click.echo()
    click.echo(f"input:  {json.dumps(task.input)}")
    if task.status == "succeeded":
        result = task.result
        click.echo(f"result: {result if isinstance(result, str) else json.dumps(result)}")
    if task.retry_at is not None:
        click.echo(f"runs again at: {when(task.retry_at)}")
    if task.parked_at is not None:
        click.echo(
            f"parked: since {when(task.parked_at)}; its run holds no worker, "
            "and the answer to its question resumes it"
        )
    lines = error_lines(task.error, traceback=show_traceback)
    if lines:
        click.echo(f"error:  {lines[0]}")
        for line in lines[1:]:
            click.echo(line)


@tasks_group.command("retry")
@deployment_option
@click.argument("task_id")
@pass_state
def retry(state: CliState, deployment: str, task_id: str) -> None:
    """Run a task that failed, timed out or was cancelled again, as a new run with the same
    id (JSON of the task)."""
    with reporting_errors(), state.client() as client:
        echo_json(client.tasks.retry(deployment, task_id))


@tasks_group.command("cancel")
@deployment_option
@click.argument("task_id")
@pass_state
def cancel(state: CliState, deployment: str, task_id: str) -> None:
    """Cancel a task that has not ended: a queued one never starts, a running one is
    stopped (JSON of the task)."""
    with reporting_errors(), state.client() as client:
        echo_json(client.tasks.cancel(deployment, task_id))


@tasks_group.command("attempts")
@deployment_option
@click.argument("task_id")
@output_option
@pass_state
def attempts(state: CliState, deployment: str, task_id: str, output: Output) -> None:
    """Show each run of a task: worker, start, end, outcome and error."""
    with reporting_errors(), state.client() as client:
        runs = client.tasks.attempts(deployment, task_id)
    if output == "json":
        echo_json(runs)
        return
    echo_table(
        ("#", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR"),
        [
            (
                str(run.attempt),
                run.worker,
                when(run.started_at, precise=True),
                when(run.finished_at, precise=True),
                run.outcome or "running",
                _reason(run.error),
            )
            for run in runs
        ],
        empty="No runs yet.",
    )


@tasks_group.command("steps")
@deployment_option
@click.argument("task_id")
@output_option
@pass_state
def steps(state: CliState, deployment: str, task_id: str, output: Output) -> None:
    """Show the steps of a durable task that ended, in the order they ended: the event each
    took, its attempt, start, duration and outcome."""
    with reporting_errors(), state.client() as client:
        found = client.tasks.steps(deployment, task_id)
        task = None if found or output == "json" else client.tasks.get(deployment, task_id)
    if output == "json":
        echo_json(found)
        return
    several_runs = len({step.run for step in found}) > 1
    headers = ("STEP", "INPUT", "ATTEMPT", "STARTED", "DURATION", "OUTCOME")
    echo_table(
        ("RUN", *headers) if several_runs else headers,
        [_step_row(step, several_runs) for step in found],
        empty=None if task is None else _no_steps(task),
    )


def _step_row(step: Step, with_run: bool) -> tuple[str, ...]:
    row = (
        step.step,
        step.input.rsplit(".", 1)[-1],
        str(step.attempt),
        when(step.started_at, precise=True),
        "" if step.duration is None else duration(step.duration),
        step.outcome,
    )
    return (str(step.run), *row) if with_run else row


def _no_steps(task: Task) -> str:
    """Why a task lists no step."""
    if not (task.controls or {}).get("durable"):
        return (
            f"No steps: service {task.service_id} is not durable, so its steps are not "
            "recorded (celeriac: {durable: true} in the deployment file records them)."
        )
    return "No steps yet: none of this task's steps has ended."


def _reason(error: dict[str, Any] | None) -> str:
    """An error's type and message on one line."""
    lines = error_lines(error, traceback=False)
    return lines[0] if lines else ""


@tasks_group.command("watch")
@deployment_option
@click.argument("task_id")
@click.option(
    "--last-event-id", type=click.IntRange(-1), help="Start after this event [default: all]."
)
@click.option("--timeout", type=float, help="Seconds to follow at most [default: to the end].")
@traceback_option
@pass_state
def watch(
    state: CliState,
    deployment: str,
    task_id: str,
    last_event_id: int | None,
    timeout: float | None,
    show_traceback: bool,
) -> None:
    """Follow a task's events until it ends, answering its questions, then print its status
    and result."""
    with reporting_errors(), state.client() as client:
        task = follow(
            state, client, deployment, task_id, timeout=timeout, last_event_id=last_event_id
        )
    click.echo(f"status: {task.status}")
    report(task, traceback=show_traceback)


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
@click.option("-S", "--service", help="Service id [default: the task's].")
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


def _event_obj_str(event_json: str | None, event_type: str | None, data: str | None) -> str:
    """The event to send, from ``--event`` or from ``--type`` and ``--data``."""
    if event_json is not None:
        if event_type is not None:
            raise click.UsageError("give either --event or --type (with --data)")
        if data is not None:
            raise click.UsageError("--data goes with --type, not with --event")
        return event_json
    if event_type is None:
        raise click.UsageError("give either --event or --type (with --data)")
    fields: Any = {}
    if data is not None:
        try:
            fields = json.loads(data)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
        if not isinstance(fields, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
    return serialized_event(event_type, fields)
