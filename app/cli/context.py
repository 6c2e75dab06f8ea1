"""What every command shares: the chosen server, the SDK client, and error reporting."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from app.sdk import CeleriacError, Client, Unauthorized


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


#: What a person at the command line can do about an error, by the error's kind.
HINTS: dict[type[CeleriacError], str] = {
    Unauthorized: "give the CLI a token: --token, CELERIAC_TOKEN, or a profile's "
    "(celeriac config set-profile NAME --token)",
}


@contextmanager
def reporting_errors(hints: Mapping[type[CeleriacError], str] | None = None) -> Iterator[None]:
    """Turn SDK errors into a message on stderr and a non-zero exit, never a traceback; with
    the hint of :data:`HINTS` (or ``hints``) for the error's kind, if it has one."""
    try:
        yield
    except CeleriacError as exc:
        known = {**HINTS, **(hints or {})}
        hint = next((h for kind, h in known.items() if isinstance(exc, kind)), None)
        raise click.ClickException(f"{exc}\n({hint})" if hint else str(exc)) from exc


def echo_json(value: Any) -> None:
    """Print a value as indented JSON (strings as they are)."""
    if isinstance(value, str):
        click.echo(value)
    else:
        click.echo(json.dumps(value, indent=2, default=str))
