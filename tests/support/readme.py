"""The README's walkthrough as a test reads it: its command blocks, in order, each command with
the output the README shows for it.

The convention, which the README's "Tests" section states for its editors:

- Only the ``sh`` and ``python`` blocks of the sections asked for (``## `` headings, with their
  subsections) are read, in order. A block right under a line ``<!-- not run: WHY -->`` is left
  out.
- An ``sh`` block with no line that starts with ``$ `` is commands only, one a line (a line
  ending in ``\\`` goes on on the next); their output is not checked.
- An ``sh`` block with ``$ `` lines is a transcript: each ``$ `` line is a command, and the
  lines under it, up to the next ``$ ``, are exactly what it prints on a terminal, where
  ``...`` stands for any text (ids, times, paths). A command with no line under it is not
  checked.
- A command whose comment starts with ``keeps running:`` (a server, a worker) runs in the
  background; the walk goes on once it printed the lines shown under it, in that order (it
  may print others between them), as a reader waits for them before going on.
- A command whose comment starts with ``install:`` is not run: the test runs in the venv that
  it installs.
- A ``python`` block runs with the venv's ``python``, from the clone's folder; each line that
  starts with ``print(`` ends with a comment that is the line it prints.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: An opening or closing code fence, with its info string.
_FENCE = re.compile(r"^```(\S*)\s*$")
#: What puts the block under it out of the walk.
_NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
#: The languages of the blocks the walk runs.
_SHELL, _PYTHON = "sh", "python"


class Kind(enum.Enum):
    """What the walk does with a step."""

    RUN = "run"
    KEEPS_RUNNING = "keeps running:"
    INSTALL = "install:"
    PYTHON = "python"


class ReadmeError(ValueError):
    """The README breaks the convention (the message names the line)."""


@dataclass(frozen=True)
class Step:
    """One command of the walkthrough (or one Python block), where the README has it."""

    line: int
    section: str
    kind: Kind
    #: The command as written (continued lines joined), or the Python block's source.
    text: str
    #: The lines the README shows it printing; None when it shows none (nothing checked).
    output: tuple[str, ...] | None

    @property
    def code(self) -> str:
        """The command without its trailing comment (all of a Python block)."""
        return self.text if self.kind is Kind.PYTHON else split_comment(self.text)[0]

    def replaced(self, substitutions: Mapping[str, str]) -> Step:
        """The step with each key of ``substitutions`` replaced by its value, in its text and
        in its output."""

        def replace(text: str) -> str:
            for old, new in substitutions.items():
                text = text.replace(old, new)
            return text

        output = None if self.output is None else tuple(map(replace, self.output))
        return dataclasses.replace(self, text=replace(self.text), output=output)

    def where(self) -> str:
        """``README.md:LINE (section)``, for messages."""
        return f"README.md:{self.line} ({self.section})"


def split_comment(line: str) -> tuple[str, str | None]:
    """A shell (or Python) line's code and its trailing comment: a ``#`` outside quotes, at
    the start or after a blank, as the shell reads it."""
    quote: str | None = None
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), None


def walkthrough(markdown: str, sections: Sequence[str]) -> list[Step]:
    """The steps of the ``sections`` of a README, in the README's order."""
    lines = markdown.splitlines()
    steps: list[Step] = []
    found: set[str] = set()
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
            found.add(section)
        opening = _FENCE.match(line)
        if not opening:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i] == "```"), None)
        if end is None:
            raise ReadmeError(f"README.md:{index + 1}: a code block that never closes")
        language, body = opening.group(1), lines[index + 1 : end]
        left_out = index > 0 and _NOT_RUN.match(lines[index - 1])
        if section in sections and not left_out:
            first = index + 2  # the README line number of the block's first line
            if language == _SHELL:
                steps += _shell_steps(body, first, section)
            elif language == _PYTHON:
                steps.append(_python_step(body, first, section))
        index = end + 1
    missing = [name for name in sections if name not in found]
    if missing:
        raise ReadmeError(f"README.md has no section {missing!r} (## headings: {sorted(found)})")
    return steps


def _kind(command: str, where: str) -> Kind:
    comment = split_comment(command)[1] or ""
    for kind in (Kind.KEEPS_RUNNING, Kind.INSTALL):
        if comment.startswith(kind.value):
            return kind
    if comment.startswith(("keeps running", "install")):
        raise ReadmeError(
            f"{where}: write the marker as {Kind.KEEPS_RUNNING.value!r} or "
            f"{Kind.INSTALL.value!r}, with its colon: {command!r}"
        )
    return Kind.RUN


def _joined(lines: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines with their line numbers, a line ending in a backslash joined with the next."""
    joined: list[tuple[int, str]] = []
    carry: tuple[int, str] | None = None
    for number, line in lines:
        if carry is not None:
            number, line = carry[0], carry[1] + "\n" + line
        if line.endswith("\\"):
            carry = (number, line)
            continue
        carry = None
        joined.append((number, line))
    if carry is not None:
        joined.append(carry)
    return joined


def _shell_steps(body: list[str], first: int, section: str) -> list[Step]:
    numbered = list(enumerate(body, start=first))
    if not any(line.startswith("$ ") for line in body):
        steps = []
        for number, line in _joined(numbered):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"README.md:{number}"
            steps.append(Step(number, section, _kind(line, where), line, None))
        return steps
    return _transcript(numbered, section)


def _transcript(numbered: list[tuple[int, str]], section: str) -> list[Step]:
    """The steps of a block of ``$ `` commands, each followed by what it prints."""
    commands: list[tuple[int, str, list[str]]] = []
    index = 0
    while index < len(numbered):
        number, line = numbered[index]
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\") and index + 1 < len(numbered):
                index += 1
                text += "\n" + numbered[index][1]
            commands.append((number, text, []))
        elif commands:
            commands[-1][2].append(line)
        elif line.strip():
            raise ReadmeError(f"README.md:{number}: output before any `$ ` command: {line!r}")
        index += 1
    steps = []
    for number, text, shown in commands:
        while shown and not shown[-1].strip():
            shown.pop()
        kind = _kind(text, f"README.md:{number}")
        if kind is Kind.KEEPS_RUNNING and not shown:
            raise ReadmeError(
                f"README.md:{number}: a command that keeps running must show the lines it "
                f"prints once it is ready (the walk waits for them): {text!r}"
            )
        steps.append(Step(number, section, kind, text, tuple(shown) if shown else None))
    return steps


def _python_step(body: list[str], first: int, section: str) -> Step:
    printed = []
    for number, line in enumerate(body, start=first):
        if line.strip().startswith("print("):
            comment = split_comment(line)[1]
            if comment is None:
                raise ReadmeError(
                    f"README.md:{number}: say what this prints, as a trailing comment: {line!r}"
                )
            printed.append(comment)
    return Step(first - 1, section, Kind.PYTHON, "\n".join(body) + "\n", tuple(printed))


# -- what a command printed, against what the README shows ---------------------------------------


def line_matches(shown: str, printed: str) -> bool:
    """Whether a printed line is the line shown, ``...`` standing for any text."""
    pattern = ".*".join(re.escape(part) for part in shown.rstrip().split("..."))
    return re.fullmatch(pattern, printed.rstrip()) is not None


def difference(shown: Sequence[str], printed: Sequence[str]) -> str | None:
    """Where the printed lines differ from those shown, line by line; None if they match."""
    for number, (want, got) in enumerate(zip(shown, printed, strict=False), start=1):
        if not line_matches(want, got):
            return f"line {number}: the README shows {want!r}, the command printed {got!r}"
    if len(shown) != len(printed):
        return f"the README shows {len(shown)} lines, the command printed {len(printed)}"
    return None


def shown_in_order(shown: Sequence[str], printed: Sequence[str]) -> bool:
    """Whether the printed lines hold the lines shown, in that order (others may come
    between)."""
    wanted = iter(shown)
    want = next(wanted, None)
    for got in printed:
        if want is None:
            break
        if line_matches(want, got):
            want = next(wanted, None)
    return want is None
