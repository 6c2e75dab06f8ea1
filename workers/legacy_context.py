"""``ctx.get`` and ``ctx.set``, the Context's state API of llama-index-workflows 1.x.

LlamaDeploy-era workflows keep state with ``await ctx.get("key", default=...)`` and
``await ctx.set("key", value)``. llama-index-workflows 2.x removed both in favour of
``ctx.store``, and llama-index-core re-exports that same ``Context`` class, so such code fails
with ``AttributeError`` on a 2.x worker. :func:`install` gives ``workflows.Context`` the two
methods back, as 1.x last defined them: thin aliases of ``ctx.store.get`` and
``ctx.store.set``. They read and write the same state as ``ctx.store``, so a session's values
carry over between its tasks whichever spelling the steps use, and the two can be mixed.

The service runtime installs them when it starts serving; importing this module changes
nothing. A later ``workflows`` release that brings its own ``get`` or ``set`` keeps them.
"""

from __future__ import annotations

from typing import Any

from workflows import Context


async def _get(self: Context, key: str, default: Any = Ellipsis) -> Any:
    """The value stored under ``key`` (a dotted path), or ``default``; without a default, a
    missing key raises ``ValueError`` (as in llama-index-workflows 1.x)."""
    return await self.store.get(key, default=default)


async def _set(self: Context, key: str, value: Any, make_private: bool = False) -> None:
    """Store ``value`` under ``key`` in the Context's state (``make_private`` is ignored, as
    1.x ignored it)."""
    await self.store.set(key, value)


_get.__name__ = _get.__qualname__ = "get"
_set.__name__ = _set.__qualname__ = "set"


def install() -> None:
    """Give ``workflows.Context`` its 1.x ``get`` and ``set``; idempotent, at worker start."""
    for name, method in (("get", _get), ("set", _set)):
        if name not in vars(Context):
            setattr(Context, name, method)
