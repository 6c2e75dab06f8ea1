"""The ``celeriac`` command: global options and the command groups."""

from __future__ import annotations

import click

from app.cli import deployments, profiles, serve, sessions, tasks, tokens, worker
from app.cli.context import CliState
from app.sdk import DEFAULT_SERVER


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-s", "--server", envvar="CELERIAC_SERVER", help=f"API server URL [default: {DEFAULT_SERVER}]."
)
@click.option("-p", "--profile", help="Profile to take the server and timeout from.")
@click.option("-t", "--timeout", type=float, help="HTTP timeout in seconds [default: 120].")
@click.option(
    "--token",
    envvar="CELERIAC_TOKEN",
    help="API token to send (CELERIAC_TOKEN, or the profile's); prefer those to this option, "
    "which other users can see in the process list.",
)
@click.version_option(package_name="celeriac")
@click.pass_context
def cli(
    ctx: click.Context,
    server: str | None,
    profile: str | None,
    timeout: float | None,
    token: str | None,
) -> None:
    """Deploy LlamaIndex workflows on Celery and run their tasks."""
    values = profiles.active_profile(profiles.load_profiles(profiles.profiles_path()), profile)
    ctx.obj = CliState(
        server=server or values.get("server") or DEFAULT_SERVER,
        timeout=timeout if timeout is not None else values.get("timeout", 120.0),
        token=token or values.get("token") or None,
    )


cli.add_command(serve.serve)
cli.add_command(serve.db_group)
cli.add_command(worker.worker)
cli.add_command(deployments.deploy)
cli.add_command(deployments.deployments_group)
cli.add_command(deployments.status)
cli.add_command(tasks.run)
cli.add_command(tasks.tasks_group)
cli.add_command(sessions.sessions_group)
cli.add_command(profiles.config_group)
cli.add_command(tokens.tokens_group)


def main() -> None:
    """Console-script entry point."""
    cli()
