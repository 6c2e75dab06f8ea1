"""A shell on a terminal, as a person types into one: one command at a time, each on a
pseudo-terminal of its own, keeping the variables and the working directory from one command
to the next.

Commands see a terminal (``isatty`` is true), so they behave as for a person: the CLI draws its
status line and asks its questions. What they print is read back as the terminal shows it
(a line rewritten in place with ``\\r`` and erased with ``ESC [K`` shows its last state), and a
question is answered by typing, as a person would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Runs one command (a file, sourced, so that ``cd`` and assignments stay in effect) and
#: saves the environment and the working directory for the next. ``set -a`` exports every
#: assignment, so that a variable set by one command (``SID=$(...)``) reaches the next.
_WRAPPER = """\
set -a
. "$1"
__walk_status=$?
export -n __walk_status
env -0 > "$2"
printf '%s' "$PWD" > "$3"
exit "$__walk_status"
"""
#: Seconds without output after which a command is taken to wait for input.
QUIET = 0.3
#: Columns and rows of the terminal.
SIZE = (120, 40)
#: A control sequence (CSI): ``ESC [``, parameters, a final letter.
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen_lines(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return goes back to the line's
    start, ``ESC [K`` erases to its end, other control sequences are dropped. The last line
    is the one the cursor is on (empty if the text ends with a newline)."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\x1b" and (control := _CSI.match(text, index)):
            if control.group(2) == "K":
                del line[column:]
            index = control.end()
            continue
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line))
            line, column = [], 0
        elif char == "\b":
            column = max(0, column - 1)
        elif char >= " " or char == "\t":
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
        index += 1
    lines.append("".join(line))
    return lines


@dataclass(frozen=True)
class Ran:
    """A command's exit status and what the terminal showed."""

    status: int
    lines: list[str]

    @property
    def printed(self) -> list[str]:
        """The lines shown, without trailing blanks and blank lines at the end."""
        lines = [line.rstrip() for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines


class CommandTimeout(AssertionError):
    """A command ran past its time (killed); the message holds what it showed."""


class Shell:
    """bash, one command at a time, with the state a person's shell keeps between them."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self._scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def run(self, command: str, *, answers: Sequence[str] = (), timeout: float = 60.0) -> Ran:
        """Run ``command`` on a terminal and wait for its end. When it waits for input with
        the start of one of the ``answers`` lines on the cursor's line, the rest of that line
        is typed, and Enter (each answer once)."""
        self._count += 1
        files = [self._scratch / f"{self._count}.{what}" for what in ("sh", "env", "cwd")]
        files[0].write_text(command + "\n")
        controller, terminal = pty.openpty()
        columns, rows = SIZE
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        try:
            process = subprocess.Popen(
                ["bash", "-c", _WRAPPER, "bash", *map(str, files)],
                cwd=self.cwd,
                env=self.env,
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                start_new_session=True,
            )
        finally:
            os.close(terminal)
        try:
            shown = self._talk(controller, process, list(answers), timeout)
        finally:
            os.close(controller)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._keep_state(files[1], files[2])
        return Ran(process.returncode, screen_lines(shown))

    def _talk(
        self, controller: int, process: subprocess.Popen[bytes], answers: list[str], timeout: float
    ) -> str:
        """Read the terminal until the command ends, typing answers to its questions."""
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            readable, _, _ = select.select([controller], [], [], QUIET)
            if readable:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the command and all it started closed the terminal
                    chunk = b""
                if not chunk:
                    break
                received += chunk
                continue
            text = received.decode(errors="replace")
            if process.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise CommandTimeout(f"still running after {timeout:g} s; it showed:\n{text}")
            cursor_line = screen_lines(text)[-1]
            answer = next((a for a in answers if _answers(a, cursor_line)), None)
            if answer is not None:
                answers.remove(answer)
                os.write(controller, answer[len(cursor_line) :].encode() + b"\n")
        return received.decode(errors="replace")

    def _keep_state(self, env_file: Path, cwd_file: Path) -> None:
        """Take the environment and working directory the command left (if it got that far)."""
        if env_file.exists():
            pairs = (item.partition("=") for item in env_file.read_text().split("\0") if item)
            self.env = {name: value for name, _, value in pairs if name != "_"}
        if cwd_file.exists():
            self.cwd = Path(cwd_file.read_text())


def _answers(line: str, cursor_line: str) -> bool:
    """Whether ``line`` (shown in the README) completes what is on the cursor's line."""
    return (
        bool(cursor_line.strip()) and len(line) > len(cursor_line) and line.startswith(cursor_line)
    )
