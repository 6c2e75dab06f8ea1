"""Web pages cannot use the server: DNS rebinding (Host), cross-site requests (Origin), CORS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from app.server import Server
from config.settings import Settings
from tests.app.conftest import all_tasks, assert_error, deployed, ok
from tests.conftest import QUICKSTART, deploy

CREATE = "/deployments/QuickStart/tasks/create"
BODY = {"input": '{"message": "hi"}'}


@pytest.mark.parametrize("host", ["localhost", "localhost:4501", "127.0.0.1:4501", "[::1]:4501"])
def test_an_open_server_answers_loopback_names(client: FlaskClient, host: str) -> None:
    assert ok(client.get("/status/", headers={"Host": host}))["status"] == "Healthy"


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:4501", "10.0.0.5:4501"])
def test_an_open_server_refuses_other_names_and_changes_nothing(
    client: FlaskClient, host: str
) -> None:
    # Given an open server with a deployment
    deployed(client, QUICKSTART)
    # When a page that rebound its name to 127.0.0.1 reads and posts through that name
    read = client.get("/status/", headers={"Host": host})
    posted = client.post(CREATE, json=BODY, headers={"Host": host})
    # Then both are refused with 403 naming the Host, and no task was made
    for response in (read, posted):
        body = assert_error(response, 403)
        assert body["message"].startswith("this server has no API token, so it answers")
        assert body["errors"] == {"Host": ["not a loopback name"]}
    assert all_tasks(client) == []


def test_a_server_with_tokens_answers_any_name_to_a_token(
    server: Server, client: FlaskClient
) -> None:
    admin = server.plane.tokens.create("admin").token
    headers = {"Host": "celeriac.example", "Authorization": f"Bearer {admin}"}
    assert ok(client.get("/status/", headers=headers))["status"] == "Healthy"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "http://localhost:3000"},  # another port is another site's page
        {"Origin": "null"},  # a sandboxed frame, a file
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_change_from_a_foreign_page_is_refused_and_changes_nothing(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    # Given a deployment
    deployed(client, QUICKSTART)
    # When a foreign page posts a task (JSON), a form (multipart deploy) and a delete
    responses = [
        client.post(CREATE, json=BODY, headers=headers),
        client.post(CREATE, data="{}", content_type="text/plain", headers=headers),
        client.delete("/deployments/QuickStart", headers=headers),
        client.post("/deployments/QuickStart/sessions/create", headers=headers),
    ]
    # Then each is refused with 403 and the header that gave it away
    for response in responses:
        body = assert_error(response, 403)
        assert "sent by a web page of another site" in body["message"]
        assert set(body["errors"]) == ({"Origin"} if "Origin" in headers else {"Sec-Fetch-Site"})
    # And nothing changed
    assert all_tasks(client) == []
    assert ok(client.get("/deployments/QuickStart"))["name"] == "QuickStart"
    assert ok(client.get("/deployments/QuickStart/sessions")) == []


def test_a_foreign_page_with_a_token_is_refused_too(server: Server, client: FlaskClient) -> None:
    run = server.plane.tokens.create("run").token
    headers = {"Origin": "http://attacker.example", "Authorization": f"Bearer {run}"}
    assert_error(client.post(CREATE, json=BODY, headers=headers), 403)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # command-line clients send neither header
        {"Origin": "http://localhost"},  # the server's own pages (/docs)
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none"},
    ],
)
def test_changes_from_the_command_line_and_the_server_s_own_pages_are_served(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    deployed(client, QUICKSTART)
    assert ok(client.post(CREATE, json=BODY, headers=headers))["task_id"]


def test_reads_from_a_foreign_page_are_served_without_cors_headers(client: FlaskClient) -> None:
    """A read changes nothing, and without CORS the page cannot see the answer."""
    response = client.get("/status/", headers={"Origin": "http://attacker.example"})
    assert ok(response)["status"] == "Healthy"
    assert "Access-Control-Allow-Origin" not in response.headers


def test_without_configured_origins_a_preflight_gets_no_cors_grant(client: FlaskClient) -> None:
    response = client.options(
        CREATE,
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


@pytest.fixture
def cors_client(settings: Settings) -> Iterator[tuple[Server, FlaskClient]]:
    """A server whose operator lets the pages of https://app.example call it."""
    server = Server(settings.replace(cors_origins="https://app.example, http://127.0.0.1:8080/"))
    server.start_workers()
    try:
        yield server, server.app.test_client()
    finally:
        server.close()
        memory.Channel.queues.clear()


def test_a_listed_origin_gets_its_preflight_and_its_answers(
    cors_client: tuple[Server, FlaskClient],
) -> None:
    server, client = cors_client
    run = server.plane.tokens.create("run").token
    admin = server.plane.tokens.create("admin").token
    ok(deploy_as(client, admin))
    # The preflight is answered without a token (browsers send none with it)
    preflight = client.options(
        CREATE,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, DELETE"
    assert preflight.headers["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
    )
    # Its request, with a token, is served, and the page may read the answer
    headers = {"Origin": "https://app.example", "Authorization": f"Bearer {run}"}
    response = client.post(CREATE, json=BODY, headers=headers)
    assert ok(response)["task_id"]
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in response.headers["Vary"]
    # Without a token it is still refused, and the page may read why
    refused = client.post(CREATE, json=BODY, headers={"Origin": "https://app.example"})
    assert_error(refused, 401)
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
    # Another origin gets no grant, and its change is refused
    other = {"Origin": "https://other.example", "Authorization": f"Bearer {run}"}
    assert_error(client.post(CREATE, json=BODY, headers=other), 403)
    # The second listed origin lost its trailing slash
    listed = {"Origin": "http://127.0.0.1:8080", "Authorization": f"Bearer {run}"}
    assert ok(client.post(CREATE, json=BODY, headers=listed))["task_id"]


def deploy_as(client: FlaskClient, token: str) -> object:
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    try:
        return deploy(client, QUICKSTART)
    finally:
        del client.environ_base["HTTP_AUTHORIZATION"]


def test_an_open_server_serves_this_host_s_clients_only(client: FlaskClient) -> None:
    """Whatever address a WSGI server was bound to, a request from another host needs a token."""
    response = client.get("/status/", environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert assert_error(response, 401)["message"].startswith("this server needs a live API token")
    for peer in ("127.0.0.1", "::1"):
        assert ok(client.get("/status/", environ_base={"REMOTE_ADDR": peer}))["status"] == "Healthy"
