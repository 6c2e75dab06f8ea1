"""How read commands print: ``-o table`` (the default) or ``-o json``.

A table has a header row and columns as wide as their widest cell, two spaces apart; an empty
cell shows ``-``, and an empty list prints nothing on stdout (a note on stderr says so). JSON
is the SDK's objects as they are (``app.sdk``'s dataclasses: their field names are the keys,
timestamps are ISO 8601 text), so that scripts have keys that stay.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import click

Output = Literal["table", "json"]
OUTPUTS: tuple[Output, ...] = ("table", "json")


def output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a read command ``-o/--output [table|json]``, and the hidden ``--json`` flag of
    older versions as an alias of ``-o json``."""

    @functools.wraps(command)
    def with_output(*args: Any, output: Output, json_flag: bool, **kwargs: Any) -> Any:
        return command(*args, output="json" if json_flag else output, **kwargs)

    with_output = click.option("--json", "json_flag", is_flag=True, hidden=True)(with_output)
    return click.option(
        "-o",
        "--output",
        type=click.Choice(OUTPUTS),
        default="table",
        show_default=True,
        help="A table with a header row, or the SDK's objects as JSON.",
    )(with_output)


def echo_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str | None = None
) -> None:
    """Print a header row and ``rows`` in aligned columns (the last one not padded); with no
    row, print nothing, and ``empty`` (if given) on stderr."""
    lines = [list(headers)] + [[cell or "-" for cell in row] for row in rows]
    if len(lines) == 1:
        if empty:
            click.echo(empty, err=True)
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


def when(moment: dt.datetime | None, *, precise: bool = False) -> str:
    """A timestamp in UTC (to the second, or to the millisecond when ``precise``); ``""``
    for none."""
    if moment is None:
        return ""
    utc = moment.astimezone(dt.UTC)
    if precise:
        return utc.isoformat(timespec="milliseconds")
    return utc.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float) -> str:
    """A length of time as a person reads it: ``0.42 s``, ``12.3 s``, ``4 min 05 s``,
    ``2 h 07 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def between(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """The time from ``start`` to ``end``; ``""`` unless both are known."""
    if start is None or end is None:
        return ""
    return duration(max((end - start).total_seconds(), 0.0))
