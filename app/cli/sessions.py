"""``celeriac sessions ...``."""

from __future__ import annotations

import dataclasses

import click

from app.cli.context import CliState, echo_json, pass_state, reporting_errors

deployment_option = click.option("-d", "--deployment", required=True, help="Deployment name.")


@click.group("sessions")
def sessions_group() -> None:
    """Create, list, read and delete sessions."""


@sessions_group.command("create")
@deployment_option
@pass_state
def create(state: CliState, deployment: str) -> None:
    """Create a session and print it."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.sessions.create(deployment)))


@sessions_group.command("list")
@deployment_option
@pass_state
def list_sessions(state: CliState, deployment: str) -> None:
    """List session ids."""
    with reporting_errors(), state.client() as client:
        for session in client.sessions.list(deployment):
            click.echo(session.session_id)


@sessions_group.command("get")
@deployment_option
@click.argument("session_id")
@pass_state
def get(state: CliState, deployment: str, session_id: str) -> None:
    """Show a session and its task ids."""
    with reporting_errors(), state.client() as client:
        echo_json(dataclasses.asdict(client.sessions.get(deployment, session_id)))


@sessions_group.command("delete")
@deployment_option
@click.argument("session_id")
@pass_state
def delete(state: CliState, deployment: str, session_id: str) -> None:
    """Delete a session."""
    with reporting_errors(), state.client() as client:
        client.sessions.delete(deployment, session_id)
    click.echo(f"Deleted session {session_id}")
