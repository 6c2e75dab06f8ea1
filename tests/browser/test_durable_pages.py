"""A durable task's page in a real headless Chromium: its steps, live, and the parked badge of a
task whose run was let go while it waits. Screenshots go to ``test-artifacts/dashboard/``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from config.settings import Settings
from tests.app.conftest import WORKFLOWS, deployed, ok, poll
from tests.conftest import embedded_settings
from tests.support.browsers import Dashboard

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

DURABLE = WORKFLOWS / "durable" / "deployment.yml"
TASKS = "/deployments/DurableSuite/tasks"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings whose durable runs are let go after half a second of waiting."""
    return embedded_settings(tmp_path, worker_concurrency=4, release_after=0.5)


def created(client: FlaskClient, service: str, **fields: object) -> str:
    body = {"service_id": service, "input": json.dumps(fields)}
    task_id: str = ok(client.post(f"{TASKS}/create", json=body))["task_id"]
    return task_id


def task_page(task_id: str) -> str:
    return f"/ui/deployments/DurableSuite/tasks/{task_id}"


def test_a_durable_task_s_steps_appear_as_they_end(
    dashboard: Dashboard, client: FlaskClient, tmp_path: Path
) -> None:
    # Given a pipeline task whose third step holds while a file exists
    deployed(client, DURABLE)
    log = tmp_path / "steps.log"
    hold = Path(f"{log}.hold")
    hold.touch()
    task_id = created(client, "pipeline", log=str(log), pause=20)
    # When its page is opened while the step holds, then the two steps that ended are listed
    dashboard.open(task_page(task_id))
    dashboard.until(
        lambda _: dashboard.attributes("#steps-table tbody tr", "data-step") == ["one", "two"]
    )
    assert dashboard.text("#status") == "running"
    assert dashboard.texts("#steps-table thead th") == [
        "STEP",
        "INPUT",
        "ATTEMPT",
        "STARTED",
        "TOOK",
        "OUTCOME",
    ]
    dashboard.shoot("durable-steps-running")
    # And once it goes on, the rest appear, without a reload
    hold.unlink()
    steps = ["one", "two", "three", "four", "five"]
    dashboard.until(lambda _: dashboard.attributes("#steps-table tbody tr", "data-step") == steps)
    dashboard.text_is("#status", "succeeded")
    first = dashboard.texts("#steps-table tbody tr:first-child td")
    assert first[:3] == ["one", "StartEvent", "1"]
    assert first[-1] == "returned Two"
    assert dashboard.texts("#steps-table tbody tr td:last-child")[-1] == "returned StopEvent"
    assert dashboard.text("#steps-state") == "5 ended"
    assert not dashboard.one("#parked").is_displayed()
    dashboard.shoot("durable-steps")


def test_a_parked_task_shows_a_badge_that_the_answer_takes_away(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    # Given an ask task, let go while it waits for its answer
    deployed(client, DURABLE)
    task_id = created(client, "ask")
    poll(lambda: ok(client.get(f"{TASKS}/{task_id}")), lambda t: t["parked_at"] is not None)
    # When its deployment's page is opened, then its row says it is parked
    dashboard.open("/ui/deployments/DurableSuite")
    row = f"#tasks tr[data-task='{task_id}']"
    assert dashboard.visible(f"{row} .pill.parked").text == "parked"
    assert dashboard.texts(f"{row} .pill")[0] == "waiting for input"
    # And its own page says so, and why that is fine
    dashboard.open(task_page(task_id))
    badge = dashboard.visible("#parked")
    assert badge.text == "parked"
    assert "holds no worker" in badge.get_attribute("title")
    assert "holds no worker" in dashboard.visible("#parked-note").text
    assert dashboard.text("#status") == "waiting for input"
    assert "PARKED" in [t.upper() for t in dashboard.texts("#facts dt")]
    dashboard.until(
        lambda _: dashboard.attributes("#steps-table tbody tr", "data-step") == ["first", "ask"]
    )
    assert dashboard.texts("#steps-table tbody tr td:last-child")[-1] == (
        "waits for input (InputRequiredEvent)"
    )
    # Its run, let go, says so rather than "running"
    assert dashboard.texts("#attempts tbody td:last-child") == ["parked"]
    dashboard.shoot("durable-parked")
    # And an answer typed into the page resumes it: the badge goes, the step runs again
    dashboard.one("#answer-text").send_keys("42")
    dashboard.one("#answer-form button").click()
    dashboard.text_is("#status", "succeeded")
    assert not dashboard.one("#parked").is_displayed()
    dashboard.until(
        lambda _: (
            dashboard.attributes("#steps-table tbody tr", "data-step") == ["first", "ask", "ask"]
        )
    )
    assert dashboard.texts("#steps-table tbody td:nth-child(3)") == ["1", "1", "2"]
    dashboard.shoot("durable-resumed")


def test_a_task_that_is_not_durable_shows_no_steps(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    deployed(client, DURABLE)
    task_id = created(client, "plain")
    dashboard.open(task_page(task_id))
    dashboard.text_is("#status", "succeeded")
    dashboard.visible("#attempts table")
    assert not dashboard.one("#steps-panel").is_displayed()
    assert not dashboard.all("#steps-table")
