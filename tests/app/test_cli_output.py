"""``-o table|json`` on every read command: tables with a header row and aligned columns, and
JSON that is the SDK's objects, key for key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from app.cli.main import cli
from app.sdk import Attempt, Client, Deployment, LiveService, Session, Status, Task, Worker
from tests.app.conftest import poll
from tests.conftest import QUICKSTART
from tests.support.cli_tables import blocks, rows


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def scene(live_server: str) -> dict[str, str]:
    """The quick start, with one task run in a session; the ids."""
    with Client(live_server) as client:
        client.deployments.create(QUICKSTART)
        session = client.sessions.create("QuickStart")
        task = client.tasks.create("QuickStart", {"message": "hi"}, session_id=session.session_id)
        client.tasks.wait("QuickStart", task.task_id, timeout=10)
    return {"server": live_server, "session": session.session_id, "task": task.task_id}


def on(server: str, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["-s", server, *args], prog_name="celeriac")
    assert result.exit_code == 0, result.output
    return result


def keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def assert_aligned(text: str) -> None:
    """Every table of ``text``: each column starts at its header's column, after two spaces."""
    for block in blocks(text):
        header = block[0]
        if not header.isupper():
            continue  # lines of details (``input:``), not a table
        starts = [
            i for i in range(2, len(header)) if header[i - 2 : i] == "  " and header[i] != " "
        ]
        for line in block[1:]:
            for start in starts:
                assert line[start - 2 : start] == "  " and line[start] != " ", (header, line)


READS = [
    ("status",),
    ("deployments", "list"),
    ("deployments", "get", "QuickStart"),
    ("tasks", "list", "-d", "QuickStart"),
    ("tasks", "get", "-d", "QuickStart", "{task}"),
    ("tasks", "attempts", "-d", "QuickStart", "{task}"),
    ("sessions", "list", "-d", "QuickStart"),
    ("sessions", "get", "-d", "QuickStart", "{session}"),
]


@pytest.mark.parametrize("command", READS, ids=" ".join)
def test_tables_have_a_header_row_and_aligned_columns(
    scene: dict[str, str], command: tuple[str, ...]
) -> None:
    args = [arg.format(**scene) for arg in command]
    table = on(scene["server"], *args).stdout
    assert table == on(scene["server"], *args, "-o", "table").stdout
    assert_aligned(table)
    tables = [block for block in blocks(table) if block[0].isupper()]
    assert tables and all(len(block) >= 2 for block in tables), table


def test_json_is_the_sdks_objects(scene: dict[str, str]) -> None:
    server, task_id, session_id = scene["server"], scene["task"], scene["session"]

    def read(*args: str) -> Any:
        return json.loads(on(server, *args, "-o", "json").stdout)

    assert set(read("status")) == keys(Status)
    [deployment] = read("deployments", "list")
    assert set(deployment) == keys(Deployment)
    described = poll(
        lambda: read("deployments", "get", "QuickStart"),
        lambda d: bool(d["services"][0]["workers"]),
    )
    assert set(described) == keys(Deployment)
    [service] = described["services"]
    assert set(service) == keys(LiveService)
    assert all(set(worker) == keys(Worker) for worker in service["workers"])
    [task] = read("tasks", "list", "-d", "QuickStart")
    assert set(task) == keys(Task)
    got = read("tasks", "get", "-d", "QuickStart", task_id)
    assert set(got) == keys(Task)
    assert (got["task_id"], got["status"], got["result"]) == (
        task_id,
        "succeeded",
        "Message received: hi",
    )
    [attempt] = read("tasks", "attempts", "-d", "QuickStart", task_id)
    assert set(attempt) == keys(Attempt)
    [session] = read("sessions", "list", "-d", "QuickStart")
    assert set(session) == keys(Session)
    assert read("sessions", "get", "-d", "QuickStart", session_id)["task_ids"] == [task_id]
    # Timestamps are ISO 8601
    assert "T" in got["created_at"] and got["created_at"].endswith("+00:00")


def test_the_old_json_flag_is_a_hidden_alias(scene: dict[str, str]) -> None:
    server, task_id = scene["server"], scene["task"]
    attempts = ("tasks", "attempts", "-d", "QuickStart", task_id)
    assert on(server, *attempts, "--json").stdout == on(server, *attempts, "-o", "json").stdout
    helped = on(server, *attempts[:2], "-h").stdout
    assert "-o, --output [table|json]" in helped and "--json" not in helped


def test_tables_show_what_a_person_looks_for(scene: dict[str, str]) -> None:
    server, task_id, session_id = scene["server"], scene["task"], scene["session"]
    [task] = rows(on(server, "tasks", "list", "-d", "QuickStart").stdout)
    assert task["TASK"] == task_id and task["STATUS"] == "succeeded"
    assert task["SERVICE"] == "echo_workflow" and task["SESSION"] == session_id
    assert task["CREATED"].endswith("Z") and task["DURATION"].endswith(" s")
    [session] = rows(on(server, "sessions", "list", "-d", "QuickStart").stdout)
    assert (session["SESSION"], session["TASKS"]) == (session_id, "1")
    [deployment] = rows(on(server, "deployments", "list").stdout)
    assert (deployment["NAME"], deployment["SERVICES"], deployment["DEFAULT SERVICE"]) == (
        "QuickStart",
        "echo_workflow",
        "echo_workflow",
    )
    got = on(server, "tasks", "get", "-d", "QuickStart", task_id).stdout
    assert blocks(got)[1] == ['input:  {"message": "hi"}', "result: Message received: hi"]


def test_an_empty_list_prints_nothing_and_says_so_on_stderr(live_server: str) -> None:
    listed = on(live_server, "deployments", "list")
    assert (listed.stdout, listed.stderr) == ("", "No deployments.\n")
    assert json.loads(on(live_server, "deployments", "list", "-o", "json").stdout) == []


def test_profiles_as_a_table_and_as_json(live_server: str) -> None:
    on(live_server, "config", "set-profile", "lab", "--server", live_server, "--token", "t0k3n")
    on(live_server, "config", "use-profile", "lab")
    [row] = rows(on(live_server, "config", "get-profiles").stdout)
    assert row == {
        "CURRENT": "*",
        "NAME": "lab",
        "SERVER": live_server,
        "TIMEOUT": "-",
        "TOKEN": "(set)",
    }
    listed = json.loads(on(live_server, "config", "get-profiles", "-o", "json").stdout)
    assert listed == {
        "current_profile": "lab",
        "profiles": {"lab": {"server": live_server, "token": "(set)"}},
    }
    current = json.loads(on(live_server, "config", "current-profile", "-o", "json").stdout)
    assert current == {"current_profile": "lab"}
