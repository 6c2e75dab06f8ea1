"""What a terminal allows that a pipe does not: a live status line, and questions.

Output piped to a file or another program stays plain: no line rewritten in place, no prompt
waiting for an answer that cannot come.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from app.cli.output import duration

_TURNS = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_TURNS_ASCII = "|/-\\"
#: ANSI: erase from the cursor to the end of the line.
_ERASE = "\x1b[K"


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


def shows_progress() -> bool:
    """Whether a live status line may be drawn: stdout and stderr are both terminals."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def can_ask() -> bool:
    """Whether a person can be asked: stdin and stderr (where the question goes) are
    terminals."""
    return _isatty(sys.stdin) and _isatty(sys.stderr)


class Spinner:
    """One line on stderr rewritten in place: a turning mark, a status, the time elapsed."""

    def __init__(self, label: str, started: float, stream: TextIO | None = None) -> None:
        self._label = label
        self._started = started
        self._stream = stream or sys.stderr
        encoding = (getattr(self._stream, "encoding", None) or "").lower()
        self._turns = _TURNS if encoding.startswith("utf") else _TURNS_ASCII
        self._turn = 0
        self._drawn = False

    def show(self, status: str, now: float) -> None:
        """Draw the line for ``status`` at time ``now`` (same clock as ``started``)."""
        mark = self._turns[self._turn % len(self._turns)]
        self._turn += 1
        line = f"{mark} {status}  {duration(now - self._started)}  {self._label}"
        width = shutil.get_terminal_size().columns - 1
        self._stream.write(f"\r{line[:width]}{_ERASE}")
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line (before anything else is printed, and at the end)."""
        if self._drawn:
            self._stream.write(f"\r{_ERASE}")
            self._stream.flush()
            self._drawn = False
