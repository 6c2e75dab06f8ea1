"""``celeriac serve`` and ``celeriac db``: commands that run on the server's host."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from config.errors import ConfigError
from config.settings import Settings


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
def serve(deployment_file: Path | None, host: str | None, port: int | None) -> None:
    """Run the API server; with no broker configured, run everything in this process.

    DEPLOYMENT_FILE, if given, is deployed at start (replacing a stored one of the same name).
    """
    # The server stack (Celery, SQLAlchemy, workflows) loads only for the commands that run it,
    # so that client commands such as ``celeriac run`` start in a fraction of a second.
    from app.server import Server

    settings = load_settings(host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = Server(settings)
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
            else (f"broker {settings.broker_url}")
        )
        click.echo(f"Celeriac API server on {url}  [{mode}; database {settings.sqlalchemy_url}]")
        click.echo(f"API docs: {url}/docs    Stop with Ctrl-C.")

    server.serve(on_ready=ready)


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

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.sqlalchemy_url, revision)
    click.echo(f"Database {settings.sqlalchemy_url} is at {revision}.")
