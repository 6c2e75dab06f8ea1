"""Reading YAML that may be hostile: bounded in size, in nesting depth and in alias expansion.

PyYAML's ``safe_load`` shares one object between an anchor and its aliases, so a
"billion laughs" file (nine aliases of nine aliases of ...) parses into little memory; the
damage comes after, when something walks the tree (validation, JSON for the database) and
meets 9**9 leaves. So the file is composed into nodes first, and the number of nodes it would
hold with every alias expanded is counted (shared nodes counted once per use, in time linear
in the nodes the file really has) before anything is built from it. Composing is recursive in
PyYAML, so the depth is capped while composing, well before Python's recursion limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from config.errors import NestedTooDeeply


@dataclass(frozen=True)
class YamlLimits:
    """How big a deployment file may be: bytes, nodes once aliases are expanded, depth."""

    max_bytes: int = 1_048_576
    max_nodes: int = 10_000
    max_depth: int = 100


class YamlTooLarge(yaml.YAMLError):
    """The document is larger than allowed (bytes, or nodes once its aliases are expanded)."""


def read_yaml(text: str | bytes, limits: YamlLimits) -> Any:
    """The single document in ``text`` as Python data (None if empty), within ``limits``;
    YamlTooLarge, NestedTooDeeply or another ``yaml.YAMLError`` if not."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > limits.max_bytes:
        raise YamlTooLarge(
            f"the file is {size:,} bytes; deployment files may have at most "
            f"{limits.max_bytes:,} (CELERIAC_MAX_YAML_BYTES)"
        )
    loader = _BoundedLoader(text, limits.max_depth)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes = _expanded_size(node, limits.max_nodes)
        if nodes > limits.max_nodes:
            raise YamlTooLarge(
                f"the file holds more than {limits.max_nodes:,} values once its aliases are "
                f"expanded (CELERIAC_MAX_YAML_NODES)"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than ``max_depth`` while it composes."""

    def __init__(self, stream: str | bytes, max_depth: int) -> None:
        super().__init__(stream)
        self._max_depth = max_depth
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                raise NestedTooDeeply(self._max_depth)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _expanded_size(root: Node, limit: int) -> int:
    """How many nodes the document holds with every alias expanded, counted up to
    ``limit + 1``; YamlTooLarge for an alias inside its own anchor (an endless document)."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            entered.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        if key in entered:
            # Every node entered and not finished is an ancestor of this one (the stack is
            # last in, first out): the node contains itself.
            raise YamlTooLarge("an alias refers to a node that contains it (an endless document)")
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]
