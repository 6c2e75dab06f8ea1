"""No traceback or server path in any response (issue 14, item 5), while no caller may see
internals (``app.trust.may_see_internals``): the stored task keeps them for the operator."""

from __future__ import annotations

import json
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import select

from app.models import Task
from app.server import Server
from tests.app.conftest import FAILING, assert_error, deployed, ok, post_yaml

PATHY = """
from pathlib import Path

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class Pathy(Workflow):
    @step
    async def read(self, ev: StartEvent) -> StopEvent:
        raise FileNotFoundError(f"cannot read {Path(__file__).parent / 'secret.txt'}")


pathy = Pathy(timeout=10)
"""

PATHY_YAML = """\
name: Pathy
control-plane: {}
default-service: pathy
services:
  pathy:
    name: Pathy
    source: {type: local, name: src}
    path: src/workflow:pathy
"""


def test_a_failed_task_shows_no_traceback_anywhere(server: Server, client: FlaskClient) -> None:
    # Given a workflow that raises
    deployed(client, FAILING)
    body = assert_error(client.post("/deployments/Failing/tasks/run", json={}), 502)
    task_id = body["errors"]["task_id"]
    # Then no answer about it carries the traceback
    answers = [
        json.dumps(body),
        *(
            client.get(f"/deployments/Failing/{path}").get_data(as_text=True)
            for path in (
                f"tasks/{task_id}",
                f"tasks/{task_id}/attempts",
                f"tasks/{task_id}/results",
                "tasks",
                f"handlers/{task_id}",
                "handlers",
            )
        ),
    ]
    for text in answers:
        assert "Traceback" not in text and "traceback" not in text, text
        assert "boom" in text
    # While the stored task keeps it, for whoever runs the server
    with server.plane.db.engine.connect() as conn:
        error = conn.scalar(select(Task.__table__.c.error).where(Task.__table__.c.id == task_id))
    assert "ValueError: boom" in error["traceback"]


def test_a_server_path_in_an_error_is_shortened(client: FlaskClient, tmp_path: Path) -> None:
    # Given a workflow whose error names a file of the server by its full path
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "workflow.py").write_text(PATHY)
    ok(post_yaml(client, PATHY_YAML, tmp_path))
    # When it fails
    body = assert_error(client.post("/deployments/Pathy/tasks/run", json={}), 502)
    task = ok(client.get(f"/deployments/Pathy/tasks/{body['errors']['task_id']}"))
    # Then the message names the file, not where it is
    assert task["error"]["message"] == "cannot read …/secret.txt"
    assert body["message"].endswith("failed: cannot read …/secret.txt")
    assert str(tmp_path) not in json.dumps(body) + json.dumps(task)


def test_deploy_errors_and_deployments_show_no_server_path(
    client: FlaskClient, tmp_path: Path
) -> None:
    # A refused deployment names its folder by its last name only
    body = assert_error(post_yaml(client, PATHY_YAML, tmp_path), 422)
    assert body["errors"]["services.pathy.source.name"] == [
        f"folder 'src' not found under the base path …/{tmp_path.name}"
    ]
    assert str(tmp_path) not in json.dumps(body)
    # A stored one does not show its base path, but to workers fetching its spec
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "workflow.py").write_text(PATHY)
    created = ok(post_yaml(client, PATHY_YAML, tmp_path))
    listed = ok(client.get("/deployments/"))
    assert created["base_path"] is None
    assert [d["base_path"] for d in listed] == [None]
    assert ok(client.get("/deployments/Pathy/spec"))["base_path"] == str(tmp_path.resolve())
