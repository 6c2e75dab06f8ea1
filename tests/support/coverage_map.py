"""Which tests run which lines: a coverage map made once, one context per test, and the
tests that a change of some lines needs (``python -m tests.mutation`` picks with it).

Code run only at import (a statement built once, a default, a decorator) is noted under no
test: for it, the tests that run the code reading the names it defines are taken, followed
from name to name through the mapped files.
"""

from __future__ import annotations

import ast
import difflib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def record(root: Path, files: list[str], args: list[str], out: Path) -> int:
    """Run pytest with ``args`` under coverage of ``files`` (under ``root``); write which test
    ran which line, how long each test took, and how long all took, to ``out``. Returns
    pytest's exit code."""
    import coverage
    import pytest

    cov = coverage.Coverage(data_file=None, include=[str(root / f) for f in files])
    durations: Counter[str] = Counter()

    class ContextPerTest:
        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(self, item: pytest.Item) -> None:
            cov.switch_context(item.nodeid)

        def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
            durations[report.nodeid] += report.duration

    began = time.monotonic()
    cov.start()
    try:
        code = pytest.main(args, plugins=[ContextPerTest()])
    finally:
        cov.stop()
    seconds = time.monotonic() - began
    data = cov.get_data()
    lines = {
        f: {str(n): sorted(c) for n, c in data.contexts_by_lineno(str(root / f)).items()}
        for f in files
    }
    out.write_text(json.dumps({"seconds": seconds, "tests": durations, "lines": lines}))
    return int(code)


def statement_lines(tree: ast.Module) -> dict[int, range]:
    """For each line, the lines of the innermost statement around it (of a compound
    statement, its header): where coverage may have noted that it ran."""
    spans: dict[int, range] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or node.end_lineno is None:
            continue
        body = [
            child.lineno
            for field in ("body", "orelse", "finalbody", "handlers", "cases")
            for child in getattr(node, field, []) or []
        ]
        end = min(body) - 1 if body else node.end_lineno
        decorators = [d.lineno for d in getattr(node, "decorator_list", [])]
        span = range(min([node.lineno, *decorators]), end + 1)
        for line in span:
            if line not in spans or len(span) < len(spans[line]):
                spans[line] = span
    return spans


def changed_lines(before: str, after: str) -> list[int]:
    """The lines of ``before`` that ``after`` changes."""
    lines: list[int] = []
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            lines.extend(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def defined_names(node: ast.stmt) -> set[str]:
    """The names a module- or class-level statement binds."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {t.id for t in targets if isinstance(t, ast.Name)}


class Coverage:
    """Which tests run which lines of a target's files (``python -m tests.mutation map``)."""

    def __init__(self, mapped: dict[str, Any], sources: dict[str, str]) -> None:
        self._lines: dict[str, dict[str, list[str]]] = mapped["lines"]
        self.durations: dict[str, float] = mapped["tests"]
        self._trees = {f: ast.parse(s) for f, s in sources.items()}
        self._spans = {f: statement_lines(t) for f, t in self._trees.items()}

    def tests_of(self, file: str, line: int) -> tuple[set[str], bool]:
        """The tests that run the statement at ``line``, and whether it runs at import."""
        found: set[str] = set()
        for covered in self._spans[file].get(line, range(line, line + 1)):
            found.update(self._lines.get(file, {}).get(str(covered), []))
        at_import = "" in found
        return found - {""}, at_import

    def outer(self, file: str, line: int) -> ast.stmt | None:
        """The module-level statement at ``line`` (in a class, the class-level one)."""
        body: list[ast.stmt] = self._trees[file].body
        found = None
        while True:
            around = [n for n in body if n.lineno <= line <= (n.end_lineno or n.lineno)]
            if not around:
                return found
            found = around[0]
            if not isinstance(found, ast.ClassDef) or line < found.body[0].lineno:
                return found
            body = found.body

    def tests_at_import(self, file: str, line: int) -> set[str] | None:
        """For a line run at import (a statement built once, a default, a decorator): the
        tests that run the code that uses what it defines, followed from name to name
        through the target's files; None if that cannot be told (then: every test)."""
        node = self.outer(file, line)
        if node is None or not isinstance(
            node, ast.Assign | ast.AnnAssign | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            return None
        found: set[str] = set()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # A default or a decorator: what its body runs for (and at import, if it does)
            for body_line in range(node.body[0].lineno, (node.end_lineno or line) + 1):
                tests, at_import = self.tests_of(file, body_line)
                found |= tests
                if at_import:
                    break
            else:
                return found
        todo, seen = defined_names(node), set[str]()
        while todo:
            name = todo.pop()
            seen.add(name)
            for where, at in self.uses(name):
                tests, at_import = self.tests_of(where, at)
                found |= tests
                if not at_import:
                    continue
                user = self.outer(where, at)
                if user is None or not isinstance(
                    user, ast.Assign | ast.AnnAssign | ast.FunctionDef | ast.ClassDef
                ):
                    return None
                todo |= defined_names(user) - seen
        return found or None

    def uses(self, name: str) -> Iterator[tuple[str, int]]:
        """Where the target's files read ``name`` (as a name or an attribute)."""
        for file, tree in self._trees.items():
            for node in ast.walk(tree):
                read = isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                if (read and node.id == name) or (
                    isinstance(node, ast.Attribute) and node.attr == name
                ):
                    yield file, node.lineno
