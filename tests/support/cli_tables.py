"""Reading the tables ``celeriac`` prints (``-o table``): a header row, then one row per item,
columns two spaces apart or more, each as wide as its widest cell."""

from __future__ import annotations

import re

_CELL = re.compile(r"\S+(?: \S+)*")


def blocks(text: str) -> list[list[str]]:
    """The output's parts, which blank lines separate, as their lines."""
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            parts[-1].append(line)
        elif parts[-1]:
            parts.append([])
    return [part for part in parts if part]


def rows(text: str, block: int = 0) -> list[dict[str, str]]:
    """The rows of the ``block``-th table of ``text``, each by the header's names; ``[]`` for
    no output at all."""
    found = blocks(text)
    if not found:
        return []
    header, *lines = found[block]
    starts = [(m.start(), m.group()) for m in _CELL.finditer(header)]
    table = []
    for line in lines:
        row = {}
        for i, (start, name) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else None
            row[name] = line[start:end].strip()
        table.append(row)
    return table


def column(text: str, name: str, block: int = 0) -> list[str]:
    """One column of a table, top to bottom."""
    return [row[name] for row in rows(text, block)]
