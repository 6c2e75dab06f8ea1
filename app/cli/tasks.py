"""``celeriac run`` and ``celeriac tasks ...``."""

from __future__ import annotations

import dataclasses

import click

from app.cli.context import CliState, echo_json, pass_state, reporting_errors

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
@click.option("--timeout", type=float, help="Seconds to wait for the result.")
@pass_state
def run(
    state: CliState,
    deployment: str,
    args: tuple[tuple[str, str], ...],
    service: str | None,
    session_id: str | None,
    timeout: float | None,
) -> None:
    """Run a task and print its result."""
    with reporting_errors(), state.client() as client:
        result = client.tasks.run(
            deployment, dict(args), service=service, session_id=session_id, timeout=timeout
        )
    echo_json(result)


@click.group("tasks")
def tasks_group() -> None:
    """List and read tasks."""


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
    """Show a task: status, result or error, timestamps."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.tasks.get(deployment, task_id)))
