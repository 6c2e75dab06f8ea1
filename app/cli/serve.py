"""``celeriac serve`` and ``celeriac db``: commands that run on the server's host."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from config.errors import ConfigError
from config.settings import Settings, without_password


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """Turn a missing database driver, or a database out of reach, into a message and exit
    code 1 instead of a traceback (the URL shown without its password)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except ModuleNotFoundError as exc:
        scheme = settings.sqlalchemy_url.split(":", 1)[0]
        extra = " (Celeriac's postgres extra: pip install -e '.[postgres]')"
        raise click.ClickException(
            f"the database URL ({scheme}) needs the driver {exc.name}, which is not installed"
            f"{extra if scheme.startswith('postgresql') else ''}"
        ) from exc
    except DBAPIError as exc:
        raise click.ClickException(
            f"could not use the database {settings.shown_database_url}: "
            f"{without_password(str(exc.orig)).strip()}"
        ) from exc


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with command-line values on top."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    changes = {k: v for k, v in overrides.items() if v is not None}
    return settings.replace(**changes) if changes else settings


@click.command()
@click.argument(
    "deployment_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--host", help="Interface to listen on [default: 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: 4501].")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Listen beyond loopback with no API token: anyone who reaches the port may deploy "
    "and run code (CELERIAC_INSECURE_NO_AUTH).",
)
def serve(
    deployment_file: Path | None, host: str | None, port: int | None, insecure_no_auth: bool
) -> None:
    """Run the API server; with no broker configured, run everything in this process.

    DEPLOYMENT_FILE, if given, is deployed at start (replacing a stored one of the same name).
    Beyond loopback (--host 0.0.0.0) it needs an API token (celeriac tokens create).
    """
    # The server stack (Celery, SQLAlchemy, workflows) loads only for the commands that run it,
    # so that client commands such as ``celeriac run`` start in a fraction of a second.
    from app.server import Server

    # The flag only switches the setting on; without it CELERIAC_INSECURE_NO_AUTH decides.
    settings = load_settings(host=host, port=port, insecure_no_auth=insecure_no_auth or None)
    if deployment_file is not None:
        settings = _adopt_platform(settings, deployment_file)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with database_errors(settings):
        try:
            server = Server(settings)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    server.start_workers()
    if deployment_file is not None:
        try:
            server.deploy(deployment_file)
        except Exception as exc:
            server.close()
            raise click.ClickException(
                f"could not deploy {deployment_file}: {_describe(exc)}"
            ) from exc

    def ready(url: str) -> None:
        mode = (
            "embedded (memory:// broker, in-process workers)"
            if settings.embedded
            else f"broker {settings.shown_broker_url}"
        )
        database = settings.shown_database_url
        click.echo(f"Celeriac API server on {url}  [{mode}; database {database}]")
        click.echo(f"API docs: {url}/docs    Stop with Ctrl-C.")

    server.serve(on_ready=ready)


def _adopt_platform(settings: Settings, deployment_file: Path) -> Settings:
    """Take the broker and database from the file's ``message-queue`` and ``state_store_uri``
    unless the environment sets them (the environment wins)."""
    from config.deployment import load_deployment_file
    from config.errors import DeploymentSpecError
    from config.platform import broker_url, state_store_url

    try:
        spec = load_deployment_file(deployment_file)
        broker = broker_url(spec.message_queue)
        database = state_store_url(spec.control_plane.state_store_uri)
    except DeploymentSpecError as exc:
        raise click.ClickException(f"{deployment_file} is not valid:\n{exc}") from exc
    except ConfigError as exc:
        raise click.ClickException(f"{deployment_file}: {exc}") from exc
    changes: dict[str, object] = {}
    if broker and "CELERIAC_BROKER_URL" not in os.environ:
        changes["broker_url"] = broker
    if database and "CELERIAC_DATABASE_URL" not in os.environ:
        changes["database_url"] = database
    return settings.replace(**changes) if changes else settings


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not errors:
        return str(exc)
    lines = [str(exc)] + [f"  {field}: {'; '.join(map(str, why))}" for field, why in errors.items()]
    return "\n".join(lines)


@click.group("db")
def db_group() -> None:
    """Database schema administration."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Apply migrations to the configured database (CELERIAC_DATABASE_URL)."""
    import migrations
    from config.datadir import private_folder

    settings = load_settings()
    private_folder(settings.data_dir)
    with database_errors(settings):
        migrations.upgrade(settings.sqlalchemy_url, revision)
    click.echo(f"Database {settings.shown_database_url} is at {revision}.")
