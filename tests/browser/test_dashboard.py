"""The dashboard in a real headless Chromium, against a real server with in-process workers:
what a person sees and does on its pages. Screenshots go to ``test-artifacts/dashboard/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.server import Server
from tests.conftest import HITL, MULTISTEP, QUICKSTART
from tests.support.browsers import Dashboard

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

APP_WORKFLOWS = Path(__file__).resolve().parent.parent / "app" / "workflows"
FAILING = APP_WORKFLOWS / "failing" / "deployment.yml"
SLEEPY = APP_WORKFLOWS / "sleepy" / "deployment.yml"
TICKER = Path(__file__).resolve().parent.parent / "benchmarks" / "ticker" / "deployment.yml"


def deployed(client: FlaskClient, path: Path, headers: dict[str, str] | None = None) -> None:
    with path.open("rb") as fh:
        response = client.post(
            "/deployments/create",
            query_string={"base_path": str(path.parent)},
            data={"config_file": (fh, path.name)},
            headers=headers or {},
        )
    assert response.status_code == 200, response.get_data(as_text=True)


def created(client: FlaskClient, deployment: str, **body: Any) -> str:
    response = client.post(f"/deployments/{deployment}/tasks/create", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    task_id: str = response.get_json()["task_id"]
    return task_id


def failed_task(client: FlaskClient, headers: dict[str, str] | None = None) -> str:
    response = client.post("/deployments/Failing/tasks/run", json={}, headers=headers or {})
    assert response.status_code == 502, response.get_data(as_text=True)
    task_id: str = response.get_json()["errors"]["task_id"]
    return task_id


def status_of(client: FlaskClient, deployment: str, task_id: str) -> str:
    status: str = client.get(f"/deployments/{deployment}/tasks/{task_id}").get_json()["status"]
    return status


def task_page(deployment: str, task_id: str) -> str:
    return f"/ui/deployments/{deployment}/tasks/{task_id}"


def test_deployments_are_listed_with_their_services_and_counts(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    # Given three deployments, with a task done on one and a failure on another
    for path in (QUICKSTART, MULTISTEP, FAILING):
        deployed(client, path)
    assert client.post("/deployments/QuickStart/tasks/run", json={"input": "{}"}).status_code == 200
    failed_task(client)
    # When the overview is opened
    dashboard.open("/ui/")
    # Then each deployment is listed, with its service's queue and live worker
    card = '[data-deployment="QuickStart"]'
    dashboard.visible(f"{card} [data-service='echo_workflow']")
    assert dashboard.texts("article.card h2") == ["Failing", "MultiStep", "QuickStart"]
    assert "celeriac.QuickStart.echo_workflow" in dashboard.text(card)
    dashboard.until(lambda _: "heartbeat" in dashboard.text(f"{card} .workers"))
    # And the counts of the last hour, the failure told at a glance
    assert dashboard.text(f"{card} [data-status='succeeded']") == "1 succeeded"
    assert "1 failed in the last hour" in dashboard.text('[data-deployment="Failing"] .headline')
    assert dashboard.text("#auth-state") == "Open server: no token needed"
    dashboard.shoot("overview")
    # And a deployment's name leads to its page, with its task
    dashboard.one(f"{card} h2 a").click()
    dashboard.visible("#tasks tr[data-status='succeeded']")
    assert dashboard.browser.current_url.endswith("/ui/deployments/QuickStart")


def test_the_task_list_updates_live_and_filters_by_status_and_session(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    # Given a task that ran, and one cancelled
    deployed(client, SLEEPY)
    done = created(client, "Sleepy", input={"seconds": 0})
    stopped = created(client, "Sleepy", input={"seconds": 30})
    assert client.post(f"/deployments/Sleepy/tasks/{stopped}/cancel").status_code == 200
    dashboard.open("/ui/deployments/Sleepy")
    dashboard.visible(f"#tasks tr[data-task='{stopped}']")
    # When a task is sent meanwhile, then it shows up without a reload, newest first
    session = client.post("/deployments/Sleepy/sessions/create").get_json()["session_id"]
    later = created(client, "Sleepy", input={"seconds": 0}, session_id=session)
    dashboard.visible(f"#tasks tr[data-task='{later}'][data-status='succeeded']")
    assert dashboard.attributes("#tasks tr", "data-task") == [later, stopped, done]
    dashboard.shoot("deployment")
    # And filtering by status keeps the cancelled one only, in the page's address too
    dashboard.one("#filter-status option[value='cancelled']").click()
    dashboard.until(lambda _: dashboard.attributes("#tasks tr", "data-task") == [stopped])
    assert "status=cancelled" in dashboard.browser.current_url
    dashboard.one("#filter-clear").click()
    dashboard.until(lambda _: len(dashboard.all("#tasks tr")) == 3)
    # And a session's link keeps that session's tasks
    dashboard.one(f"#tasks tr[data-task='{later}'] button").click()
    dashboard.until(lambda _: dashboard.attributes("#tasks tr", "data-task") == [later])
    assert f"session={session}" in dashboard.browser.current_url
    # And the sessions are listed with their tasks
    links = f"[data-session='{session}'] .session-tasks a"
    dashboard.until(lambda _: dashboard.texts(links) == [f"{later[:12]}…"])


def test_a_task_s_events_appear_while_it_runs(dashboard: Dashboard, client: FlaskClient) -> None:
    # Given a task that streams eight events, 0.4 s apart
    deployed(client, TICKER)
    task_id = created(client, "Ticker", input={"count": 8, "interval": 0.4, "delay": 0.5})
    # When its page is opened
    dashboard.open(task_page("Ticker", task_id))
    # Then its events appear while it still runs
    dashboard.visible("#events li[data-type='Tick']")
    assert status_of(client, "Ticker", task_id) == "running"
    dashboard.text_is("#status", "running", timeout=1.0)
    seen_while_running = len(dashboard.all("#events li[data-type='Tick']"))
    assert seen_while_running < 8
    dashboard.shoot("task-running")
    # And all of them, in order, then the end
    dashboard.visible("#events li[data-type='StopEvent']")
    ticks = [json.loads(text)["n"] for text in dashboard.texts("#events li[data-type='Tick'] code")]
    assert ticks == list(range(8))
    dashboard.text_is("#status", "succeeded")
    dashboard.text_is("#result", "8")
    dashboard.until(lambda _: "stream ended" in dashboard.text("#events-state"))
    statuses = ["queued", "running", "succeeded"]
    dashboard.until(lambda _: dashboard.attributes("#timeline li", "data-status") == statuses)


def test_a_human_input_answer_typed_into_the_page_finishes_the_task(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    # Given a task that asks a question (one that would be markup, were it not text)
    deployed(client, HITL)
    question = 'Ship it? <img src=x onerror="window.pwned=1">'
    task_id = created(client, "HumanInTheLoop", input={"question": question})
    # When its page is opened, then it shows the question, as text
    dashboard.open(task_page("HumanInTheLoop", task_id))
    dashboard.visible("#answer-form")
    dashboard.text_is("#question", question)
    assert dashboard.text("#status") == "waiting for input"
    dashboard.shoot("task-asks")
    # And an answer typed into the page finishes the task with it
    dashboard.one("#answer-text").send_keys("Yes, ship it")
    dashboard.one("#answer-form button").click()
    dashboard.text_is("#status", "succeeded")
    dashboard.text_is("#result", "Yes, ship it")
    assert not dashboard.one("#answer").is_displayed()
    task = client.get(f"/deployments/HumanInTheLoop/tasks/{task_id}").get_json()
    assert task["result"] == "Yes, ship it"
    statuses = ["queued", "running", "waiting_input", "running", "succeeded"]
    dashboard.until(lambda _: dashboard.attributes("#timeline li", "data-status") == statuses)
    # And nothing of the question ran as script
    assert dashboard.browser.execute_script("return window.pwned") is None
    assert not dashboard.all("#main img")
    dashboard.shoot("task-answered")


def test_a_failed_task_shows_its_error(dashboard: Dashboard, client: FlaskClient) -> None:
    deployed(client, FAILING)
    task_id = failed_task(client)
    dashboard.open(task_page("Failing", task_id))
    # The error, first, as the workflow raised it
    dashboard.text_is(".error-type", "builtins.ValueError")
    assert dashboard.text(".error-message") == "boom"
    assert dashboard.text("#status") == "failed"
    # Without a traceback on an open server (only an admin token's holder sees it)
    assert "admin token" in dashboard.text("#outcome")
    assert not dashboard.all("#outcome .frame")
    # And its timeline ends with the failure, and it may be retried
    assert dashboard.attributes("#timeline li", "data-status")[-1] == "failed"
    assert dashboard.visible("#retry").text == "Retry"
    assert not dashboard.one("#cancel").is_displayed()
    dashboard.shoot("task-failed")
    # And a task that is not there is said so
    dashboard.open(task_page("Failing", "nope"))
    dashboard.text_is("#problem", "task 'nope' not found in deployment 'Failing'")
    assert not dashboard.one("#columns").is_displayed()


def test_with_tokens_the_pages_ask_for_one_and_an_admin_sees_the_workflow_s_frame(
    dashboard: Dashboard, server: Server, client: FlaskClient
) -> None:
    # Given a failed task, then tokens made (the server is protected from then on)
    deployed(client, FAILING)
    task_id = failed_task(client)
    admin = server.plane.tokens.create("admin").token
    # When the overview is opened, then it asks for a token and shows nothing else
    dashboard.open("/ui/")
    dashboard.visible("#sign-in-form")
    assert not dashboard.one("#main").is_displayed()
    dashboard.shoot("sign-in")
    # And a token that is not live is refused
    dashboard.one("#token").send_keys("clr_not-a-token")
    dashboard.one("#sign-in-form button").click()
    dashboard.until(lambda _: "not live" in dashboard.text("#sign-in-error"))
    # And the admin's token shows the deployments
    dashboard.one("#token").send_keys(admin)
    dashboard.one("#sign-in-form button").click()
    dashboard.visible('[data-deployment="Failing"]')
    assert dashboard.text("#auth-state") == "Signed in with a token"
    # And stays in this tab only, never in an address
    stored = dashboard.browser.execute_script("return sessionStorage.getItem('celeriac.token')")
    assert stored == admin
    assert not dashboard.browser.execute_script("return localStorage.length")
    # And on the failed task's page, the workflow's own frame comes first, the trace after
    dashboard.open(task_page("Failing", task_id))
    frame = dashboard.visible("#outcome .frame-where")
    assert frame.text.startswith("workflow.py, line ")
    assert frame.text.endswith(", in explode")
    assert dashboard.text("#outcome .frame-code") == 'raise ValueError("boom")'
    trace = dashboard.one("#outcome details.trace")
    assert trace.get_attribute("open") is None
    assert "Traceback (most recent call last)" in trace.get_attribute("textContent")
    assert admin not in dashboard.browser.current_url
    dashboard.shoot("task-failed-admin")
    # And signing out forgets the token
    dashboard.one("#sign-out").click()
    dashboard.visible("#sign-in-form")
    assert dashboard.browser.execute_script("return sessionStorage.length") == 0


def test_a_task_is_cancelled_and_retried_from_its_page(
    dashboard: Dashboard, client: FlaskClient
) -> None:
    # Given a task that sleeps for a while
    deployed(client, SLEEPY)
    task_id = created(client, "Sleepy", input={"seconds": 30})
    dashboard.open(task_page("Sleepy", task_id))
    dashboard.text_is("#status", "running")
    # When Cancel is pressed, then the task is cancelled, and may be retried
    dashboard.visible("#cancel").click()
    dashboard.text_is("#status", "cancelled")
    assert status_of(client, "Sleepy", task_id) == "cancelled"
    dashboard.text_is(".error-type", "celeriac.Cancelled")
    dashboard.shoot("task-cancelled")
    # And Retry runs it again, and Cancel stops it again
    dashboard.visible("#retry").click()
    dashboard.text_is("#status", "running")
    dashboard.visible("#cancel").click()
    dashboard.text_is("#status", "cancelled")
    assert client.get(f"/deployments/Sleepy/tasks/{task_id}").get_json()["run"] == 2
