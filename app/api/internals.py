"""What a caller who may not see internals (``app.trust.may_see_internals``) gets of errors:
no traceback, and no path of the server's file system.

A path is a run of ``/``-separated names after a space, a quote or a bracket whose first name
is a folder at the root of the server's file system (``/home/...``, ``/tmp/...``, ``/srv/...``):
so the API's own paths in messages (``/deployments/X/tasks/Y``) stay, and URLs too. Each
path becomes ``…/`` and its last name, which is what a user needs to recognise the file.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from app.trust import may_see_internals

_PATH = re.compile(r"(?<![\w.:/~-])/([\w.@+-]+)((?:/[\w.@+-]*)*)")
#: Keys of an error that only help whoever runs the server.
_INTERNAL_KEYS = frozenset({"traceback"})


@functools.cache
def _root_folders() -> frozenset[str]:
    """The names of the folders at the root of this machine's file system."""
    try:
        return frozenset(entry.name for entry in os.scandir("/") if entry.is_dir())
    except OSError:
        return frozenset()


def without_paths(text: str) -> str:
    """``text`` with every server path shortened to ``…/`` and its last name."""
    roots = _root_folders()

    def shorten(match: re.Match[str]) -> str:
        if match.group(1) not in roots:
            return match.group(0)
        last = match.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f"…/{last}"

    return _PATH.sub(shorten, text)


def shown(value: Any) -> Any:
    """``value`` (an error's message, its ``errors``, a task's error) as the caller of this
    request may see it: as is for a caller who may see internals, else without tracebacks
    and server paths."""
    if may_see_internals():
        return value
    return _public(value)


def _public(value: Any) -> Any:
    if isinstance(value, str):
        return without_paths(value)
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k not in _INTERNAL_KEYS}
    if isinstance(value, list | tuple):
        return [_public(item) for item in value]
    return value
