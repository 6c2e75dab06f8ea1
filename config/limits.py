"""How deep and how big a JSON value is, measured without recursion, so that a hostile value
(an array nested 100,000 deep, say) is measured and refused instead of exhausting the stack."""

from __future__ import annotations

import json
from typing import Any

from config.errors import NestedTooDeeply


def nesting_depth(value: Any, stop_after: int) -> int:
    """How deeply arrays and objects nest in ``value`` (0 for a scalar, 1 for ``[]``); the
    walk stops as soon as the depth passes ``stop_after``, returning ``stop_after + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > stop_after:
            return stop_after + 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def json_size(value: Any) -> int:
    """The size of ``value`` as compact JSON, in bytes (UTF-8)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(text.encode("utf-8"))


def load_json(text: str | bytes, max_depth: int) -> Any:
    """Parse JSON text that may be hostile: ValueError (a ``json.JSONDecodeError`` for bad
    syntax) if it is not JSON or nests deeper than ``max_depth``."""
    try:
        value = json.loads(text)
    except RecursionError:
        # The C decoder gives up past the interpreter's recursion limit, and unwinds cleanly.
        raise NestedTooDeeply(max_depth) from None
    if nesting_depth(value, max_depth) > max_depth:
        raise NestedTooDeeply(max_depth)
    return value
