"""The ``celeriac`` command: global options and the command groups."""

from __future__ import annotations

from typing import Any

import click

from app.cli import (
    deployments,
    profiles,
    run,
    scaffold,
    serve,
    sessions,
    tasks,
    tokens,
    worker,
)
from app.sdk import DEFAULT_SERVER

#: The global option ``-s`` stands for, whatever the command.
_SERVER_OPTIONS = frozenset({"-s", "--server"})


class CeleriacGroup(click.Group):
    """The root command. A ``-s`` given after a command is explained: it is the global
    ``--server``, which goes before the command (``--service`` is ``-S``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            if exc.option_name not in _SERVER_OPTIONS or exc.ctx is None:
                raise
            raise click.UsageError(_misplaced_server(exc.ctx), exc.ctx) from None


def _misplaced_server(ctx: click.Context) -> str:
    """Why ``-s`` after the command ``ctx`` is refused, and what to write instead."""
    path = ctx.command_path.split(" ", 1)
    before = f"{path[0]} -s URL {path[1] if len(path) > 1 else ''}".strip()
    message = f"-s is the global --server option: give it before the command ({before} ...)"
    if any(param.name in ("service", "services") for param in ctx.command.params):
        message += "; for the service, use --service (or -S)"
    return message


@click.group(cls=CeleriacGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = profiles.resolve_state(server, profile, timeout, token)


cli.add_command(serve.serve)
cli.add_command(serve.db_group)
cli.add_command(worker.worker)
cli.add_command(scaffold.init)
cli.add_command(deployments.deploy)
cli.add_command(deployments.deployments_group)
cli.add_command(deployments.status)
cli.add_command(run.run)
cli.add_command(tasks.tasks_group)
cli.add_command(sessions.sessions_group)
cli.add_command(profiles.config_group)
cli.add_command(tokens.tokens_group)


def main() -> None:
    """Console-script entry point."""
    cli()
