"""``celeriac worker``: run the control-plane consumer or the workers of a deployment."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from app.cli.completion import deployment_names
from app.cli.context import CliState, pass_state
from app.cli.serve import load_settings


@click.command()
@click.option(
    "--control-plane", is_flag=True, help="Consume the control_plane queue (needs the database)."
)
@click.option(
    "-d",
    "--deployment",
    "deployments",
    multiple=True,
    help="Serve this deployment (repeatable).",
    shell_complete=deployment_names,
)
@click.option(
    "-S", "--service", "services", multiple=True, help="Serve only this service (repeatable)."
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Tasks run at once by this worker.",
)
@click.option(
    "--base-path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where local sources live on this host [default: as deployed].",
)
@click.option(
    "--install-dependencies",
    is_flag=True,
    help="pip install the services' python-dependencies before starting.",
)
@click.option("-n", "--hostname", help="Celery node name [default: celeriac-<what>-<pid>@<host>].")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@pass_state
def worker(
    state: CliState,
    control_plane: bool,
    deployments: tuple[str, ...],
    services: tuple[str, ...],
    concurrency: int,
    base_path: Path | None,
    install_dependencies: bool,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Run a Celery worker: the control-plane consumer, or the service workers of deployments.

    Service workers fetch their deployments from the API server (-s/--server) and talk to the
    broker only; the control-plane consumer needs the database (CELERIAC_DATABASE_URL).
    """
    if control_plane == bool(deployments):
        raise click.UsageError("give either --control-plane or one or more --deployment")
    settings = load_settings(server=state.server, token=state.token)
    if settings.embedded:
        raise click.UsageError(
            "CELERIAC_BROKER_URL is not set: with the embedded memory:// broker every worker "
            "runs inside `celeriac serve`; set a broker (amqp://, redis://, sqs://) first"
        )
    # The worker stack loads only for this command, so client commands start fast.
    from workers.errors import WorkerError
    from workers.launch import prepare_service_worker, run_worker
    from workers.protocol import CONTROL_QUEUE

    if control_plane:
        import migrations
        from app.control.plane import ControlPlane
        from app.db import Database
        from workers.celery_app import create_celery

        migrations.upgrade(settings.sqlalchemy_url)
        plane = ControlPlane(settings, Database.for_settings(settings), create_celery(settings))
        celery, queues = plane.celery, [CONTROL_QUEUE]
        node = hostname or _node_name("control-plane")
    else:
        node = hostname or _node_name(deployments[0])
        try:
            celery, queues = prepare_service_worker(
                settings,
                deployments,
                services,
                base_path=base_path,
                hostname=node,
                install_dependencies=install_dependencies,
            )
        except WorkerError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"Serving {', '.join(queues)} from {settings.server}", err=True)
    exit_code = run_worker(
        celery, queues, hostname=node, concurrency=concurrency, loglevel=loglevel
    )
    sys.exit(exit_code)


def _node_name(what: str) -> str:
    return f"celeriac-{what}-{os.getpid()}@{socket.gethostname()}"
