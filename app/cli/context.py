"""What every command shares: the chosen server, the SDK client, and error reporting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from app.sdk import CeleriacError, Client


@dataclass
class CliState:
    """Global options, resolved: the server URL, the HTTP timeout and the API token."""

    server: str
    timeout: float | None
    token: str | None = field(default=None, repr=False)

    def client(self) -> Client:
        """An SDK client for the chosen server."""
        return Client(self.server, timeout=self.timeout, token=self.token or "")


pass_state = click.make_pass_decorator(CliState)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn SDK errors into a message on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc


def echo_json(value: Any) -> None:
    """Print a value as indented JSON (strings as they are)."""
    if isinstance(value, str):
        click.echo(value)
    else:
        click.echo(json.dumps(value, indent=2, default=str))
