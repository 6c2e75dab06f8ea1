"""What every command shares: the chosen server, the SDK client, and error reporting."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from app.sdk import DEFAULT_SERVER, CeleriacError, Client, Unauthorized


@dataclass
class CliState:
    """Global options, resolved: the server URL, the HTTP timeout and the API token."""

    server: str
    timeout: float | None
    token: str | None = field(default=None, repr=False)

    def client(self) -> Client:
        """An SDK client for the chosen server."""
        return Client(self.server, timeout=self.timeout, token=self.token or "")

    def command(self, *args: str) -> str:
        """A ``celeriac`` command line a person can paste, naming this server unless it is
        the default one (the token stays where it was found: never in a printed command)."""
        words = ["celeriac"]
        if self.server.rstrip("/") != DEFAULT_SERVER:
            words += ["-s", self.server]
        return " ".join(shlex.quote(word) for word in [*words, *args])


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


def plain(value: Any) -> Any:
    """``value`` with the SDK's dataclasses turned into dicts (their fields are the keys)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    """Timestamps as ISO 8601; anything else JSON cannot hold as its text."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def echo_json(value: Any) -> None:
    """Print a value as indented JSON (strings as they are, the SDK's objects as dicts)."""
    if isinstance(value, str):
        click.echo(value)
    else:
        click.echo(json.dumps(plain(value), indent=2, default=_json_default))
