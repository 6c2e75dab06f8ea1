"""Tests of per-service environment variables inside one process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from tests.workers.conftest import unique_name
from workers import environ


@pytest.fixture
def name(scoped_environ: None) -> str:
    """A variable name set nowhere in the real environment."""
    variable = unique_name()
    assert variable not in os.environ
    return variable


def test_scoped_variables_are_seen_inside_the_scope_only(name: str) -> None:
    # Given os.environ made overlay-aware and a variable that is set nowhere
    outside_length = len(os.environ)
    # When code runs inside a scope that sets it
    with environ.scoped({name: "1"}):
        # Then every way of reading the environment sees it
        assert os.environ[name] == "1"
        assert os.getenv(name) == "1"
        assert os.environ.get(name) == "1"
        assert name in os.environ
        assert name in list(os.environ)
        assert os.environ.copy()[name] == "1"
        assert dict(os.environ.items())[name] == "1"
        assert len(os.environ) == outside_length + 1
    # And outside the scope it is gone again
    assert name not in os.environ
    assert os.getenv(name) is None
    assert name not in list(os.environ)
    assert len(os.environ) == outside_length
    with pytest.raises(KeyError):
        os.environ[name]


def test_scope_overrides_a_real_variable_without_changing_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "real")
    with environ.scoped({name: "scoped"}):
        assert os.environ[name] == "scoped"
        assert list(os.environ).count(name) == 1
    assert os.environ[name] == "real"


def test_nested_scopes_restore_the_outer_one(name: str) -> None:
    with environ.scoped({name: "outer"}):
        with environ.scoped({name: "inner"}):
            assert os.environ[name] == "inner"
        assert os.environ[name] == "outer"
    assert name not in os.environ


def test_threads_in_different_scopes_each_see_their_own_value(name: str) -> None:
    # Given two threads that enter different scopes and overlap inside them
    both_inside = threading.Barrier(2, timeout=5)
    seen: dict[str, list[str | None]] = {}

    def service(value: str) -> None:
        with environ.scoped({name: value}):
            first = os.environ.get(name)
            both_inside.wait()
            # Both scopes are active now: each thread must still see only its own.
            second = os.getenv(name)
            both_inside.wait()
        seen[value] = [first, second]

    threads = [threading.Thread(target=service, args=(v,)) for v in ("one", "two")]
    # When they run at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    # Then each saw its own value, and this thread saw neither
    assert seen == {"one": ["one", "one"], "two": ["two", "two"]}
    assert name not in os.environ


def test_asyncio_task_created_inside_the_scope_sees_it(name: str) -> None:
    async def read_later() -> str | None:
        await asyncio.sleep(0)
        return os.environ.get(name)

    async def main() -> tuple[str | None, str | None]:
        with environ.scoped({name: "in-task"}):
            inside = asyncio.create_task(read_later())
        # The scope has ended before either task runs: what counts is where it was created.
        outside = asyncio.create_task(read_later())
        return await inside, await outside

    assert asyncio.run(main()) == ("in-task", None)


def test_writes_inside_a_scope_go_to_the_real_environment(name: str) -> None:
    written = unique_name()
    try:
        # Given a scope
        with environ.scoped({name: "scoped"}):
            # When code inside it sets a variable
            os.environ[written] = "written"
        # Then the variable stays after the scope, and a child process sees it
        assert os.environ[written] == "written"
        child = subprocess.run(
            [sys.executable, "-c", f"import os; print(os.environ.get({written!r}))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert child.stdout.strip() == "written"
    finally:
        os.environ.pop(written, None)


def test_install_is_idempotent(scoped_environ: None) -> None:
    # Given os.environ already installed
    installed = os.environ
    assert isinstance(installed, environ.ScopedEnviron)
    before = dict(installed)
    # When install runs again
    environ.install()
    # Then the same object stays in place, with the same real variables
    assert os.environ is installed
    assert dict(os.environ) == before
