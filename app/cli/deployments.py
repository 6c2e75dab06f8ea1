"""``celeriac deploy``, ``celeriac status`` and ``celeriac deployments ...``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from app.cli.completion import deployment_names
from app.cli.context import CliState, echo_json, pass_state, reporting_errors
from app.cli.output import Output, echo_table, output_option, when
from app.sdk import Conflict, Deployment, LiveService


def described(deployment: Deployment, live: list[LiveService]) -> dict[str, Any]:
    """A deployment as ``-o json`` prints it: the SDK's ``Deployment``, whose ``services``
    are the ``LiveService`` objects (each with the workers serving it now)."""
    return {**dataclasses.asdict(deployment), "services": [dataclasses.asdict(s) for s in live]}


@click.command()
@click.argument("deployment_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reload", is_flag=True, help="Replace the deployment of the same name.")
@click.option(
    "--base-path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder local sources are relative to [default: the file's folder].",
)
@pass_state
def deploy(state: CliState, deployment_file: Path, reload: bool, base_path: Path | None) -> None:
    """Deploy a YAML file."""
    with (
        reporting_errors({Conflict: "celeriac deploy --reload replaces it"}),
        state.client() as client,
    ):
        created = client.deployments.create(
            deployment_file, base_path=base_path.resolve() if base_path else None, reload=reload
        )
    for warning in created.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"Deployment successful: {created.name}")


@click.command()
@output_option
@pass_state
def status(state: CliState, output: Output) -> None:
    """Show the server's health and its deployments."""
    with state.client() as client:
        health = client.status()
    if output == "json":
        echo_json(health)
    if health.status != "Healthy":
        raise click.ClickException(
            f"API server at {state.server} is {health.status}: {health.status_message}"
        )
    if output == "json":
        return
    click.echo(f"Celeriac at {state.server} is {health.status}.")
    if not health.deployments:
        click.echo("No deployments.", err=True)
        return
    click.echo()
    echo_table(("DEPLOYMENT",), [(name,) for name in health.deployments])


@click.group("deployments")
def deployments_group() -> None:
    """List, read and delete deployments."""


@deployments_group.command("list")
@output_option
@pass_state
def list_deployments(state: CliState, output: Output) -> None:
    """List deployments: version, services, default service, last change."""
    with reporting_errors(), state.client() as client:
        deployments = client.deployments.list()
    if output == "json":
        echo_json(deployments)
        return
    echo_table(
        ("NAME", "VERSION", "SERVICES", "DEFAULT SERVICE", "UPDATED"),
        [
            (
                d.name,
                str(d.version),
                ", ".join(s.name for s in d.services),
                d.default_service or "",
                when(d.updated_at),
            )
            for d in deployments
        ],
        empty="No deployments.",
    )


@deployments_group.command("get")
@click.argument("name", shell_complete=deployment_names)
@output_option
@pass_state
def get_deployment(state: CliState, name: str, output: Output) -> None:
    """Show a deployment, its services and the live workers of each."""
    with reporting_errors(), state.client() as client:
        deployment = client.deployments.get(name)
        live = client.deployments.services(name)
    if output == "json":
        echo_json(described(deployment, live))
        return
    echo_table(
        ("NAME", "VERSION", "DEFAULT SERVICE", "CREATED", "UPDATED"),
        [
            (
                deployment.name,
                str(deployment.version),
                deployment.default_service or "",
                when(deployment.created_at),
                when(deployment.updated_at),
            )
        ],
    )
    click.echo()
    echo_table(
        ("SERVICE", "QUEUE", "WORKER", "HOST", "PID", "LAST HEARTBEAT"),
        [row for service in live for row in _service_rows(service)],
    )
    for warning in deployment.warnings:
        click.echo(f"Warning: {warning}", err=True)


def _service_rows(service: LiveService) -> list[tuple[str, ...]]:
    """A service's rows: one per live worker, or one that says there is none."""
    if not service.workers:
        return [(service.name, service.queue, "(none live)", "", "", "")]
    return [
        (
            service.name,
            service.queue,
            worker.name,
            worker.host or "",
            "" if worker.pid is None else str(worker.pid),
            when(worker.last_heartbeat),
        )
        for worker in service.workers
    ]


@deployments_group.command("delete")
@click.argument("name", shell_complete=deployment_names)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def delete_deployment(state: CliState, name: str, yes: bool) -> None:
    """Delete a deployment with its sessions and tasks."""
    if not yes and not click.confirm(f"Delete deployment {name} and all its tasks?", default=False):
        raise click.Abort()
    with reporting_errors(), state.client() as client:
        client.deployments.delete(name)
    click.echo(f"Deleted deployment {name}")
