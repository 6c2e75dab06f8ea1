"""Per-service environment variables inside one process.

Several services may run in one worker process (always in the embedded mode), yet each
service's ``env`` and ``env-files`` must apply to that service only. :func:`install` replaces
``os.environ`` with a mapping that first looks at a context-local overlay; :func:`scoped` sets
the overlay for the code (and the asyncio tasks it starts) running one service. Writes still go
to the real process environment. Child processes started by user code see only the real one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

_overlay: ContextVar[Mapping[str, str] | None] = ContextVar("celeriac_env_overlay", default=None)
_install_lock = threading.Lock()


class ScopedEnviron(os._Environ):
    """``os.environ`` that answers from the current service's overlay first."""

    def __getitem__(self, key: str) -> str:
        overlay = _overlay.get()
        if overlay is not None and key in overlay:
            return overlay[key]
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        overlay = _overlay.get()
        seen = set()
        for key in super().__iter__():
            seen.add(key)
            yield key
        if overlay:
            yield from (key for key in overlay if key not in seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def install() -> None:
    """Make ``os.environ`` overlay-aware; idempotent, called by worker processes at start."""
    with _install_lock:
        current = os.environ
        if isinstance(current, ScopedEnviron):
            return
        os.environ = ScopedEnviron(  # noqa: B003
            current._data,  # type: ignore[attr-defined]
            current.encodekey,
            current.decodekey,
            current.encodevalue,
            current.decodevalue,
        )


@contextmanager
def scoped(env: Mapping[str, str]) -> Iterator[None]:
    """Within this block (and tasks it creates), ``os.environ`` also shows ``env``."""
    token = _overlay.set(dict(env) if env else None)
    try:
        yield
    finally:
        _overlay.reset(token)
