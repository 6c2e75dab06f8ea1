"""``celeriac deploy``, ``celeriac status`` and ``celeriac deployments ...``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from app.cli.context import CliState, echo_json, pass_state, reporting_errors
from app.sdk import Conflict, Deployment, LiveService


def _describe(deployment: Deployment, live: list[LiveService]) -> dict[str, object]:
    """A deployment as JSON, each service with the workers serving it now."""
    workers = {service.name: service.workers for service in live}
    return {
        "name": deployment.name,
        "version": deployment.version,
        "default_service": deployment.default_service,
        "warnings": deployment.warnings,
        "services": [
            {
                "name": s.name,
                "display_name": s.display_name,
                "queue": s.queue,
                "workers": [asdict(w) for w in workers.get(s.name, [])],
            }
            for s in deployment.services
        ],
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
    }


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
@pass_state
def status(state: CliState) -> None:
    """Show the server's health and its deployments."""
    with state.client() as client:
        health = client.status()
    if health.status != "Healthy":
        raise click.ClickException(
            f"API server at {state.server} is {health.status}: {health.status_message}"
        )
    click.echo(f"Celeriac at {state.server} is {health.status}.")
    if health.deployments:
        click.echo("Deployments:")
        for name in health.deployments:
            click.echo(f"- {name}")
    else:
        click.echo("No deployments.")


@click.group("deployments")
def deployments_group() -> None:
    """List, read and delete deployments."""


@deployments_group.command("list")
@pass_state
def list_deployments(state: CliState) -> None:
    """List deployment names."""
    with reporting_errors(), state.client() as client:
        for deployment in client.deployments.list():
            click.echo(deployment.name)


@deployments_group.command("get")
@click.argument("name")
@pass_state
def get_deployment(state: CliState, name: str) -> None:
    """Show a deployment, its services and the live workers of each."""
    with reporting_errors(), state.client() as client:
        echo_json(_describe(client.deployments.get(name), client.deployments.services(name)))


@deployments_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def delete_deployment(state: CliState, name: str, yes: bool) -> None:
    """Delete a deployment with its sessions and tasks."""
    if not yes and not click.confirm(f"Delete deployment {name} and all its tasks?", default=False):
        raise click.Abort()
    with reporting_errors(), state.client() as client:
        client.deployments.delete(name)
    click.echo(f"Deleted deployment {name}")
