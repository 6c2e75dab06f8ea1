"""``celeriac tokens``: API tokens, made and revoked on the server's database directly.

Like ``celeriac db upgrade``, these run on the server's host with its settings
(``CELERIAC_DATA_DIR``, ``CELERIAC_DATABASE_URL``), so the first admin token needs no token.
A token is printed once, by ``create``, and stored only as its hash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from app.cli.context import echo_json
from app.cli.output import Output, echo_table, output_option
from app.cli.serve import database_errors, load_settings

if TYPE_CHECKING:
    from app.control.tokens import Tokens

SCOPES = ("admin", "run", "read", "worker")


@contextmanager
def _tokens() -> Iterator[Tokens]:
    """The tokens of the configured database, brought to the current schema first."""
    # The server stack loads only for these commands, as for ``celeriac serve``.
    import migrations
    from app.control.tokens import Tokens
    from app.db import Database
    from app.errors import ControlPlaneError
    from config.datadir import private_folder

    settings = load_settings()
    private_folder(settings.data_dir)
    with database_errors(settings):
        migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url, pool_size=1)
    try:
        yield Tokens(db)
    except ControlPlaneError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        db.dispose()


@click.group("tokens")
def tokens_group() -> None:
    """API tokens (run on the server's host: they use its database directly)."""


@tokens_group.command("create")
@click.option("--scope", required=True, type=click.Choice(SCOPES), help="What the token may do.")
@click.option("--name", help="A name to revoke it by (unique among live tokens).")
def create(scope: str, name: str | None) -> None:
    """Make a token and print it, once: it is stored only as a hash.

    Scopes: admin (deployments, and all of run), run (tasks, sessions, events, and all of
    read), read (reads only), worker (what service workers fetch: specs with env values).
    """
    with _tokens() as tokens:
        made = tokens.create(scope, name)
    label = f" {made.info.name!r}" if made.info.name else ""
    click.echo(
        f"Token {made.info.id}{label}, scope {scope}. Keep it now; it is not shown again:", err=True
    )
    click.echo(made.token)


@tokens_group.command("list")
@output_option
def list_tokens(output: Output) -> None:
    """Every token (never the token itself): id, name, scope, created, last used, revoked."""
    with _tokens() as tokens:
        rows = tokens.all()
    if output == "json":
        echo_json(rows)
        return
    echo_table(
        ("ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"),
        [
            (
                str(row.id),
                row.name or "",
                row.scope.value,
                _when(row.created_at),
                _when(row.last_used_at),
                _when(row.revoked_at),
            )
            for row in rows
        ],
        empty="No tokens.",
    )


@tokens_group.command("revoke")
@click.argument("token")
def revoke(token: str) -> None:
    """Revoke a token by its ID or the NAME of a live one; it is refused from then on."""
    with _tokens() as tokens:
        row = tokens.revoke(token)
    label = f" {row.name!r}" if row.name else ""
    click.echo(f"Revoked token {row.id}{label} ({row.scope.value}).")


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""
