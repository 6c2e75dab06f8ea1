"""``celeriac sessions ...``."""

from __future__ import annotations

import json

import click

from app.cli.completion import deployment_option
from app.cli.context import CliState, echo_json, pass_state, reporting_errors
from app.cli.output import Output, echo_table, output_option, when
from app.sdk import Session

#: The widest a session's state is shown in a table; ``-o json`` shows all of it.
STATE_WIDTH = 60


@click.group("sessions")
def sessions_group() -> None:
    """Create, list, read and delete sessions."""


@sessions_group.command("create")
@deployment_option
@pass_state
def create(state: CliState, deployment: str) -> None:
    """Create a session and print it (JSON)."""
    with reporting_errors(), state.client() as client:
        echo_json(client.sessions.create(deployment))


@sessions_group.command("list")
@deployment_option
@output_option
@pass_state
def list_sessions(state: CliState, deployment: str, output: Output) -> None:
    """List sessions: when each was made, how many tasks it ran, the state it keeps."""
    with reporting_errors(), state.client() as client:
        sessions = client.sessions.list(deployment)
    if output == "json":
        echo_json(sessions)
        return
    echo_table(_HEADERS, [_row(session) for session in sessions], empty="No sessions.")


_HEADERS = ("SESSION", "CREATED", "TASKS", "STATE")


def _row(session: Session) -> tuple[str, ...]:
    kept = json.dumps(session.state, default=str) if session.state else ""
    if len(kept) > STATE_WIDTH:
        kept = kept[: STATE_WIDTH - 1] + "…"
    return (session.session_id, when(session.created_at), str(len(session.task_ids)), kept)


@sessions_group.command("get")
@deployment_option
@click.argument("session_id")
@output_option
@pass_state
def get(state: CliState, deployment: str, session_id: str, output: Output) -> None:
    """Show a session and its tasks' ids."""
    with reporting_errors(), state.client() as client:
        session = client.sessions.get(deployment, session_id)
    if output == "json":
        echo_json(session)
        return
    echo_table(_HEADERS, [_row(session)])
    if session.task_ids:
        click.echo()
        echo_table(("TASK",), [(task_id,) for task_id in session.task_ids])


@sessions_group.command("delete")
@deployment_option
@click.argument("session_id")
@pass_state
def delete(state: CliState, deployment: str, session_id: str) -> None:
    """Delete a session."""
    with reporting_errors(), state.client() as client:
        client.sessions.delete(deployment, session_id)
    click.echo(f"Deleted session {session_id}")
