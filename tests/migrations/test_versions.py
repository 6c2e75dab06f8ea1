"""Migrations that change existing tables keep what those tables hold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

import migrations
from migrations import alembic_config

NOW = dt.datetime(2026, 11, 21, tzinfo=dt.UTC).isoformat()


def _columns_nullable(url: str, table: str) -> dict[str, bool]:
    engine = create_engine(url)
    try:
        return {c["name"]: c["nullable"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                result = conn.execute(text(statement))
                if result.returns_rows:
                    rows = [tuple(r) for r in result]
            return rows
    finally:
        engine.dispose()


def test_0005_lets_a_task_have_no_session_and_keeps_existing_rows(tmp_path: Path) -> None:
    # Given a database at 0004 holding a deployment, a session, a task and its event
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0004")
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
        f"INSERT INTO sessions (id, deployment_id, state, created_at) VALUES ('s1', 1, '{{}}', "
        f"'{NOW}')",
        "INSERT INTO tasks (id, deployment_id, session_id, service, input, status, attempts, "
        f"created_at) VALUES ('t1', 1, 's1', 'echo', '{{}}', 'succeeded', 1, '{NOW}')",
        "INSERT INTO events (task_id, direction, seq, type, qualified_name, data, created_at) "
        f"VALUES ('t1', 'out', 0, 'StopEvent', 'x.StopEvent', '{{}}', '{NOW}')",
    )
    assert _columns_nullable(url, "tasks")["session_id"] is False
    # When it is upgraded
    migrations.upgrade(url)
    # Then a task may have no session, and the rows are all there
    assert _columns_nullable(url, "tasks")["session_id"] is True
    assert _execute(url, "SELECT id, session_id FROM tasks") == [("t1", "s1")]
    assert _execute(url, "SELECT task_id, seq FROM events") == [("t1", 0)]
    _execute(
        url,
        "INSERT INTO tasks (id, deployment_id, session_id, service, input, status, attempts, "
        f"created_at) VALUES ('t2', 1, NULL, 'echo', '{{}}', 'queued', 0, '{NOW}')",
    )
    # And going back removes only the tasks without a session, which 0004 cannot hold
    command.downgrade(alembic_config(url), "0004")
    assert _execute(url, "SELECT id FROM tasks") == [("t1",)]
    with pytest.raises(IntegrityError):
        _execute(
            url,
            "INSERT INTO tasks (id, deployment_id, session_id, service, input, status, "
            f"attempts, created_at) VALUES ('t3', 1, NULL, 'echo', '{{}}', 'queued', 0, '{NOW}')",
        )


def test_0007_takes_stored_tasks_as_published_when_they_were_dispatched(tmp_path: Path) -> None:
    # Given a database at 0006 with a dispatched task and one waiting for its session's turn
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0006")
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at, "
        f"dispatched_at) VALUES ('sent', 1, 'echo', '{{}}', 'queued', 0, '{NOW}', '{NOW}')",
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at) "
        f"VALUES ('waiting', 1, 'echo', '{{}}', 'queued', 0, '{NOW}')",
    )
    # When it is upgraded
    migrations.upgrade(url)
    # Then the dispatched task counts as published then (no sweep sends it again), the
    # waiting one as not published
    rows = _execute(url, "SELECT id, published_at IS NOT NULL FROM tasks ORDER BY id")
    assert rows == [("sent", 1), ("waiting", 0)]
    # And going back drops the column and keeps the tasks
    command.downgrade(alembic_config(url), "0006")
    assert "published_at" not in _columns_nullable(url, "tasks")
    assert _execute(url, "SELECT id FROM tasks ORDER BY id") == [("sent",), ("waiting",)]


def test_0009_adds_task_attempts_and_going_back_drops_them_only(tmp_path: Path) -> None:
    # Given a database at 0008 holding a task that ran once
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0008")
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at) "
        f"VALUES ('t1', 1, 'echo', '{{}}', 'succeeded', 1, '{NOW}')",
    )
    # When it is upgraded
    migrations.upgrade(url)
    # Then the task keeps its count, with no history, and a run can be recorded once
    assert _execute(url, "SELECT attempts FROM tasks") == [(1,)]
    assert _execute(url, "SELECT count(*) FROM task_attempts") == [(0,)]
    columns = "INSERT INTO task_attempts (task_id, attempt, worker, started_at)"
    _execute(url, f"{columns} VALUES ('t1', 2, 'w', '{NOW}')")
    with pytest.raises(IntegrityError):  # the same run (task, worker, start), another number
        _execute(url, f"{columns} VALUES ('t1', 3, 'w', '{NOW}')")
    assert _columns_nullable(url, "task_attempts") == {
        "task_id": False,
        "attempt": False,
        "worker": False,
        "started_at": False,
        "finished_at": True,
        "outcome": True,
        "error": True,
    }
    # And going back drops the table and keeps the task
    command.downgrade(alembic_config(url), "0008")
    assert "task_attempts" not in _tables(url)
    assert _execute(url, "SELECT id, attempts FROM tasks") == [("t1", 1)]
    # And it can go up again
    migrations.upgrade(url)
    assert _execute(url, "SELECT count(*) FROM task_attempts") == [(0,)]


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_0011_adds_api_tokens_whose_live_names_are_unique(tmp_path: Path) -> None:
    # Given a database at 0010 holding a deployment
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0010")
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
    )
    # When it is upgraded, it has no token (so a loopback server stays open)
    migrations.upgrade(url)
    assert _execute(url, "SELECT count(*) FROM api_tokens") == [(0,)]
    # And a name is unique among live tokens only; a hash is unique
    columns = "INSERT INTO api_tokens (name, scope, token_hash, created_at, revoked_at)"
    _execute(url, f"{columns} VALUES ('ci', 'run', 'h1', '{NOW}', '{NOW}')")
    _execute(url, f"{columns} VALUES ('ci', 'run', 'h2', '{NOW}', NULL)")
    with pytest.raises(IntegrityError):
        _execute(url, f"{columns} VALUES ('ci', 'read', 'h3', '{NOW}', NULL)")
    with pytest.raises(IntegrityError):
        _execute(url, f"{columns} VALUES ('other', 'read', 'h2', '{NOW}', NULL)")
    # And going back drops the table only
    command.downgrade(alembic_config(url), "0010")
    assert "api_tokens" not in _tables(url)
    assert _execute(url, "SELECT name FROM deployments") == [("D",)]


def test_0012_adds_idempotency_keys_unique_per_deployment_and_gone_with_their_task(
    tmp_path: Path,
) -> None:
    # Given a database at 0011 holding two deployments and a task of the first
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0011")
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}'), "
        f"('E', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at) "
        f"VALUES ('t1', 1, 'echo', '{{}}', 'queued', 0, '{NOW}')",
    )
    # When it is upgraded, it has no key
    migrations.upgrade(url)
    assert _execute(url, "SELECT count(*) FROM idempotency_keys") == [(0,)]
    # And a key is unique within its deployment only, and names a task that exists
    columns = "INSERT INTO idempotency_keys (deployment_id, key, request_hash, task_id, created_at)"
    _execute(url, f"{columns} VALUES (1, 'k', 'h', 't1', '{NOW}')")
    _execute(url, f"{columns} VALUES (2, 'k', 'h', 't1', '{NOW}')")
    with pytest.raises(IntegrityError):
        _execute(url, f"{columns} VALUES (1, 'k', 'other', 't1', '{NOW}')")
    with pytest.raises(IntegrityError):
        _execute(
            url, "PRAGMA foreign_keys=ON", f"{columns} VALUES (1, 'k2', 'h', 'nothing', '{NOW}')"
        )
    # And a key goes with its deployment, and with its task (E's key names D's task)
    _execute(url, "PRAGMA foreign_keys=ON", "DELETE FROM deployments WHERE name = 'D'")
    assert _execute(url, "SELECT count(*) FROM idempotency_keys") == [(0,)]
    # And going back drops the table only
    command.downgrade(alembic_config(url), "0011")
    assert "idempotency_keys" not in _tables(url)
    assert _execute(url, "SELECT name FROM deployments") == [("E",)]


def test_0018_numbers_step_attempts_on_read_and_going_back_numbers_them_again(
    tmp_path: Path,
) -> None:
    # Given a database at 0017 holding a durable task's steps: "ask" ran twice on one event
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    migrations.upgrade(url, "0017")
    columns = "task_id, run, seq, step, input, input_key, attempt, ended_at, outcome"
    _execute(
        url,
        "INSERT INTO deployments (name, spec, source_yaml, base_path, version, created_at, "
        f"updated_at) VALUES ('D', '{{}}', '', '.', 1, '{NOW}', '{NOW}')",
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at) "
        f"VALUES ('t1', 1, 'echo', '{{}}', 'succeeded', 2, '{NOW}')",
        f"INSERT INTO task_steps ({columns}) VALUES "
        f"('t1', 1, 3, 'ask', 'Q', 'q', 1, '{NOW}', 'failed'), "
        f"('t1', 1, 5, 'other', 'Q', 'q', 1, '{NOW}', 'ended'), "
        f"('t1', 2, 1, 'ask', 'Q', 'q', 2, '{NOW}', 'ended')",
    )
    # When it is upgraded, the steps stay, without their stored number
    migrations.upgrade(url)
    assert "attempt" not in _columns_nullable(url, "task_steps")
    listed = "SELECT run, seq, step FROM task_steps ORDER BY run, seq"
    assert _execute(url, listed) == [(1, 3, "ask"), (1, 5, "other"), (2, 1, "ask")]
    # And going back numbers them as the listing does
    command.downgrade(alembic_config(url), "0017")
    numbered = "SELECT step, attempt FROM task_steps ORDER BY run, seq"
    assert _execute(url, numbered) == [("ask", 1), ("other", 1), ("ask", 2)]
    assert _columns_nullable(url, "task_steps")["attempt"] is False
