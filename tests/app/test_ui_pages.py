"""The dashboard's pages as Flask serves them: public shells that hold no data, escaped,
with a content policy; the reads their scripts make are guarded as every API route is."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from app.server import Server
from tests.app.conftest import FAILING, WORKFLOWS, assert_error, deployed, ok, poll
from tests.conftest import QUICKSTART, REPO

DURABLE = WORKFLOWS / "durable" / "deployment.yml"

PAGES = [
    ("/ui/", "overview", "Deployments"),
    ("/ui/deployments/QuickStart", "deployment", "QuickStart"),
    ("/ui/deployments/QuickStart/tasks/abc123", "task", "Task abc123"),
]


@pytest.mark.parametrize(("url", "page", "title"), PAGES)
def test_each_page_is_an_html_shell_that_names_what_it_shows(
    client: FlaskClient, url: str, page: str, title: str
) -> None:
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'data-page="{page}"' in html
    assert f"<title>{title}" in html
    # Its script and the stylesheet come from this server
    assert f'src="/ui/static/{page}.js"' in html
    assert 'href="/ui/static/celeriac.css"' in html
    assert 'id="sign-in-form"' in html


def test_pages_carry_the_names_in_their_address_for_their_script(client: FlaskClient) -> None:
    html = client.get("/ui/deployments/QuickStart/tasks/abc123").get_data(as_text=True)
    assert 'data-deployment="QuickStart"' in html
    assert 'data-task="abc123"' in html


def test_the_task_page_has_a_steps_panel_and_a_parked_badge_that_its_script_shows(
    client: FlaskClient,
) -> None:
    html = client.get("/ui/deployments/DurableSuite/tasks/abc123").get_data(as_text=True)
    # Both hidden until the script has a durable task's steps, or a parked task, to show
    assert re.search(
        r'<section class="panel" id="steps-panel" hidden>\s*<div class="panel-head">'
        r"<h2>Steps</h2>",
        html,
    )
    badge = re.search(r'<span class="pill parked" id="parked" hidden [^>]*>parked</span>', html)
    assert badge is not None
    # The badge explains itself: the run holds no worker, and the answer resumes it
    title = re.search(r'title="([^"]*)"', badge.group()).group(1)  # type: ignore[union-attr]
    assert "holds no worker" in title and "answer" in title and "resumes" in title
    assert 'id="parked-note" hidden' in html
    # The script reads the steps of a durable task only, and the task's parked_at
    response = client.get("/ui/static/task.js")
    script = response.get_data(as_text=True)
    response.close()
    assert "`${taskPath}/steps`" in script and "task.controls.durable" in script
    assert "task.parked_at" in script


def test_names_in_the_address_are_escaped(client: FlaskClient) -> None:
    hostile = '"><img src=x onerror=alert(1)>'
    response = client.get(f"/ui/deployments/{quote(hostile)}/tasks/{quote(hostile)}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<img" not in html
    assert 'data-deployment="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in html
    assert "<title>Task &#34;&gt;&lt;img" in html


@pytest.mark.parametrize("url", [page[0] for page in PAGES] + ["/ui/static/common.js"])
def test_every_answer_of_the_dashboard_has_its_content_policy(
    client: FlaskClient, url: str
) -> None:
    response = client.get(url)
    policy = response.headers["Content-Security-Policy"]
    # No inline script, nothing from elsewhere, no framing
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    response.close()


def test_pages_run_no_inline_script(client: FlaskClient) -> None:
    for url, _, _ in PAGES:
        html = client.get(url).get_data(as_text=True)
        assert html.count("<script") == 1
        assert '<script type="module" src=' in html
        assert not re.search(r"\son[a-z]+=", html), "an inline event handler"


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [
        ("common.js", "text/javascript"),
        ("overview.js", "text/javascript"),
        ("deployment.js", "text/javascript"),
        ("task.js", "text/javascript"),
        ("celeriac.css", "text/css"),
    ],
)
def test_the_scripts_and_stylesheet_are_served(
    client: FlaskClient, name: str, mimetype: str
) -> None:
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    response.close()


def test_ui_without_its_slash_leads_to_the_overview(client: FlaskClient) -> None:
    response = client.get("/ui")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    "url", ["/ui/static/nope.js", "/ui/deployments", "/ui/deployments/Q/tasks/T/more", "/ui/x"]
)
def test_addresses_that_are_not_pages_are_404(client: FlaskClient, url: str) -> None:
    assert_error(client.get(url), 404)


def test_the_dashboard_answers_only_loopback_names_on_an_open_server(
    client: FlaskClient,
) -> None:
    # A page that points its own name at 127.0.0.1 (DNS rebinding) gets no dashboard
    body = assert_error(client.get("/ui/", headers={"Host": "evil.example"}), 403)
    assert body["errors"] == {"Host": ["not a loopback name"]}


# -- with tokens --------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_with_tokens_the_pages_open_without_one_and_tell_nothing(
    server: Server, client: FlaskClient
) -> None:
    # Given a deployment with a failed task, then a token made
    deployed(client, FAILING)
    task_id = assert_error(client.post("/deployments/Failing/tasks/run", json={}), 502)["errors"][
        "task_id"
    ]
    server.plane.tokens.create("admin")
    # When its pages are opened without a token, then they are served
    for url in ("/ui/", "/ui/deployments/Failing", f"/ui/deployments/Failing/tasks/{task_id}"):
        response = client.get(url)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        # And hold nothing but what their address says: no service, status or error
        assert "Boom" not in html
        assert "boom" not in html
        assert "ValueError" not in html
    response = client.get("/ui/static/task.js")
    assert response.status_code == 200
    response.close()


@pytest.mark.parametrize(
    "path",
    ["/deployments/", "/deployments/QuickStart/summary", "/deployments/QuickStart/tasks"],
)
def test_with_tokens_the_reads_of_the_pages_need_one(
    server: Server, client: FlaskClient, path: str
) -> None:
    deployed(client, QUICKSTART)
    admin = server.plane.tokens.create("admin").token
    worker = server.plane.tokens.create("worker").token
    read = server.plane.tokens.create("read").token
    assert_error(client.get(path), 401)
    assert_error(client.get(path, headers=bearer(worker)), 403)
    ok(client.get(path, headers=bearer(read)))
    ok(client.get(path, headers=bearer(admin)))


def test_with_tokens_a_timeline_needs_one(server: Server, client: FlaskClient) -> None:
    deployed(client, QUICKSTART)
    task = ok(client.post("/deployments/QuickStart/tasks/create", json={"input": "{}"}))
    read = server.plane.tokens.create("read").token
    path = f"/deployments/QuickStart/tasks/{task['task_id']}/timeline"
    assert_error(client.get(path), 401)
    assert ok(client.get(path, headers=bearer(read)))[0]["status"] == "queued"


def test_with_tokens_a_task_s_steps_need_a_read_token(server: Server, client: FlaskClient) -> None:
    deployed(client, DURABLE)
    task = ok(client.post("/deployments/DurableSuite/tasks/create", json={"input": "{}"}))
    read = server.plane.tokens.create("read").token
    worker = server.plane.tokens.create("worker").token
    path = f"/deployments/DurableSuite/tasks/{task['task_id']}/steps"
    assert_error(client.get(path), 401)
    assert_error(client.get(path, headers=bearer(worker)), 403)
    assert isinstance(ok(client.get(path, headers=bearer(read))), list)
    # The task ends before the server closes (a durable run that still waits for its
    # journal would hold the server's close for the journal's timeout)
    item = f"/deployments/DurableSuite/tasks/{task['task_id']}"
    poll(lambda: ok(client.get(item, headers=bearer(read))), lambda t: t["finished_at"])
    poll(lambda: ok(client.get(path, headers=bearer(read))), lambda steps: len(steps) == 5)


def test_the_new_reads_are_in_the_api_document(client: FlaskClient) -> None:
    paths = ok(client.get("/openapi.json"))["paths"]
    summary = paths["/deployments/{deployment_name}/summary"]["get"]
    timeline = paths["/deployments/{deployment_name}/tasks/{task_id}/timeline"]["get"]
    steps = paths["/deployments/{deployment_name}/tasks/{task_id}/steps"]["get"]
    for operation in (summary, timeline, steps):
        assert {"bearerAuth": ["read"]} in operation["security"]
        assert "401" in operation["responses"]
    listing = paths["/deployments/{deployment_name}/tasks"]["get"]
    names = {parameter["name"] for parameter in listing["parameters"]}
    assert {"status", "service_id", "order", "session_id", "limit", "offset"} <= names
    # The pages are not API operations
    assert not [path for path in paths if path.startswith("/ui")]


# -- packaging ----------------------------------------------------------------------------------


def test_every_file_of_the_dashboard_ships_in_the_package() -> None:
    """setup.cfg's package data names every template, script and stylesheet."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["app.ui"].split(",") if p.strip()]
    folder = REPO / "app" / "ui"
    files = [
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix != ".pyc"
        and "__pycache__" not in path.parts
        and path.suffix != ".py"
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert missing == []
    assert Path(folder / "templates" / "ui" / "base.html").is_file()
