"""What the CLI shows of a task that ended without success: the error's type and message, and
the frame of the workflow's own code that raised it; ``--traceback`` shows the whole trace.

A task's error carries its ``traceback`` (the worker's, as Python printed it) only for a
caller who may see the server's internals (an admin token's holder); others get the type and
the message alone. The workflow's own frame is the last one in the trace that is neither an
installed package's (``site-packages``), the standard library's, nor Celeriac's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import click

from app.cli.context import echo_json
from app.sdk import Task

_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')
#: Frames of installed packages, of the standard library, and of code that has no file.
_LIBRARY = re.compile(r"[/\\](?:site|dist)-packages[/\\]|[/\\]lib[/\\]python[\d.]*[/\\]|^<")
#: Celeriac's packages: a frame in one of their files (as this installation has them) is
#: Celeriac's own, wherever the worker that ran it keeps them.
_PROJECT = Path(__file__).resolve().parents[2]
_OWN_PACKAGES = frozenset({"app", "workers", "config"})


@dataclass(frozen=True)
class Frame:
    """One frame of a printed traceback: where, and the line of code if Python showed it."""

    path: str
    line: int
    function: str
    code: str = ""

    def lines(self) -> list[str]:
        """The frame as Python prints it."""
        shown = [f'  File "{self.path}", line {self.line}, in {self.function}']
        return [*shown, f"    {self.code}"] if self.code else shown


def frames(traceback: str) -> list[Frame]:
    """Every frame of a printed traceback (chained exceptions' too), in the printed order."""
    lines = traceback.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            continue
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _FRAME.match(code) or set(code) <= {"^", "~", " "}:
            code = ""  # the next frame, or Python 3.11's markers under a line
        found.append(Frame(match["path"], int(match["line"]), match["function"].strip(), code))
    return found


def own_frame(traceback: str) -> Frame | None:
    """The last frame in the workflow's own code, or None if the trace has none."""
    for frame in reversed(frames(traceback)):
        if not _LIBRARY.search(frame.path) and not _is_celeriacs(frame.path):
            return frame
    return None


def _is_celeriacs(path: str) -> bool:
    """Whether a frame's file is one of Celeriac's own modules."""
    pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
    parts = pure.parts
    return any(
        part in _OWN_PACKAGES and _PROJECT.joinpath(*parts[i:]).is_file()
        for i, part in enumerate(parts)
    )


def error_lines(error: dict[str, Any] | None, *, traceback: bool) -> list[str]:
    """An error as lines: its type and message, then the workflow's frame, or with
    ``traceback`` the whole trace (or why there is none)."""
    if not error:
        return []
    kind = str(error.get("type") or "").rsplit(".", 1)[-1]
    message = str(error.get("message") or "")
    lines = [f"{kind}: {message}" if kind else message]
    trace = error.get("traceback")
    if traceback:
        if isinstance(trace, str) and trace.strip():
            return [*lines, trace.rstrip()]
        return [*lines, "(no traceback: the server shows tracebacks to admin tokens only)"]
    if isinstance(trace, str):
        frame = own_frame(trace)
        if frame is not None:
            lines += frame.lines()
        lines.append("(--traceback shows the whole trace)")
    return lines


def report(task: Task, *, traceback: bool = False) -> None:
    """Print an ended task's result; a task that did not succeed is an error (exit code 1)
    that shows what went wrong and where."""
    if task.status == "succeeded":
        echo_json(task.result)
        return
    lines = error_lines(task.error, traceback=traceback)
    head = f"task {task.task_id} {task.status}"
    raise click.ClickException("\n".join([f"{head}: {lines[0]}", *lines[1:]] if lines else [head]))
