"""API tokens and scopes: 401 without a live token, 403 outside the scope, nothing changed."""

from __future__ import annotations

import base64
import datetime as dt
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory
from sqlalchemy import select, update

from app.api.auth import ROUTES
from app.control.tokens import CACHE_SECONDS, Tokens
from app.db import Database
from app.models import ApiToken
from app.models.base import table_of
from app.server import Server
from config.errors import ConfigError
from config.settings import Settings
from tests.app.conftest import (
    ENVIRON,
    all_tasks,
    assert_error,
    deployed,
    ok,
    poll,
    wait_for_task,
)
from tests.conftest import QUICKSTART, deploy

_TOKENS = table_of(ApiToken)
UNAUTHORIZED = (
    "this server needs a live API token: send 'Authorization: Bearer <token>' "
    "(celeriac tokens create makes one on the server's host)"
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str, user: str = "token") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def token(server: Server, scope: str, name: str | None = None) -> str:
    """A new live token of ``scope`` (made as ``celeriac tokens create`` makes it)."""
    return server.plane.tokens.create(scope, name).token


def assert_unauthorized(response: Any) -> dict[str, Any]:
    body = assert_error(response, 401)
    assert body["message"] == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="celeriac"'
    return body


def names(client: FlaskClient, admin: str) -> list[str]:
    return [d["name"] for d in ok(client.get("/deployments/", headers=bearer(admin)))]


def test_a_server_without_tokens_serves_everyone_on_loopback(client: FlaskClient) -> None:
    # Given a server with no token: a request with no token, or any token, is served
    assert ok(client.get("/status/"))["status"] == "Healthy"
    assert ok(client.get("/status/", headers=bearer("clr_made_up")))["status"] == "Healthy"
    assert ok(deploy(client, QUICKSTART))["name"] == "QuickStart"


def test_once_a_token_exists_a_request_without_one_is_refused_and_changes_nothing(
    server: Server, client: FlaskClient
) -> None:
    # Given a server that has one live token
    admin = token(server, "admin")
    # When a client sends requests without a token
    refused = [
        client.get("/status/"),
        client.get("/deployments/"),
        deploy(client, QUICKSTART),
        client.post("/deployments/QuickStart/tasks/create", json={}),
    ]
    # Then each is answered 401 with WWW-Authenticate, and nothing was deployed
    for response in refused:
        assert_unauthorized(response)
    assert names(client, admin) == []


def test_unknown_revoked_and_garbled_tokens_get_the_same_answer_as_none(
    server: Server, client: FlaskClient
) -> None:
    # Given a live admin token and a revoked one
    admin = token(server, "admin")
    revoked = token(server, "admin", "old")
    server.plane.tokens.revoke("old")
    headers = [
        {},
        bearer("clr_not-a-token-of-this-server"),
        bearer("not even the prefix"),
        bearer(revoked),
        basic(revoked),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Token " + admin},
        {"Authorization": "Bearer"},
        bearer("clr_" + "x" * 5000),
    ]
    # When each tries to deploy, the answers are one and the same 401, and nothing is stored
    bodies = [assert_unauthorized(deploy_with(client, h)) for h in headers]
    assert all(b == bodies[0] for b in bodies), bodies
    assert names(client, admin) == []


def deploy_with(client: FlaskClient, headers: dict[str, str]) -> Any:
    with QUICKSTART.open("rb") as fh:
        return client.post(
            "/deployments/create",
            query_string={"base_path": str(QUICKSTART.parent)},
            data={"config_file": (fh, QUICKSTART.name)},
            content_type="multipart/form-data",
            headers=headers,
        )


def test_a_token_is_taken_as_bearer_or_as_the_password_of_basic(
    server: Server, client: FlaskClient
) -> None:
    admin = token(server, "admin")
    assert ok(client.get("/status/", headers=bearer(admin)))["status"] == "Healthy"
    # As LlamaDeploy's clients send it from http://token:<token>@host:4501 (any user name)
    assert ok(client.get("/status/", headers=basic(admin)))["status"] == "Healthy"
    assert ok(client.get("/status/", headers=basic(admin, user="")))["status"] == "Healthy"


def test_the_api_description_is_public(server: Server, client: FlaskClient) -> None:
    # Given a server with a live token, /docs and the document open without one
    token(server, "admin")
    assert ok(client.get("/openapi.json"))["openapi"] == "3.1.0"
    assert client.get("/docs").status_code == 200
    response = client.get("/docs/static/swagger-ui.css")
    assert response.status_code == 200
    response.close()
    assert set(ok(client.get("/"))) == {"swagger_docs", "status"}
    # And the status, which names the deployments, is not
    assert_unauthorized(client.get("/status/"))


def test_an_unknown_route_needs_a_token_before_it_is_a_404(
    server: Server, client: FlaskClient
) -> None:
    worker = token(server, "worker")
    assert_unauthorized(client.get("/no/such/route"))
    assert_error(client.get("/no/such/route", headers=bearer(worker)), 404)
    assert_unauthorized(client.put("/deployments/"))
    assert_error(client.put("/deployments/", headers=bearer(worker)), 405)


@pytest.fixture
def scoped(server: Server, client: FlaskClient) -> Iterator[dict[str, str]]:
    """A token of every scope, with the quick start and the env deployment deployed."""
    tokens = {scope: token(server, scope) for scope in ("admin", "run", "read", "worker")}
    headers = bearer(tokens["admin"])
    with QUICKSTART.open("rb") as fh:
        ok(
            client.post(
                "/deployments/create",
                query_string={"base_path": str(QUICKSTART.parent)},
                data={"config_file": (fh, QUICKSTART.name)},
                headers=headers,
            )
        )
    with ENVIRON.open("rb") as fh:
        ok(
            client.post(
                "/deployments/create",
                query_string={"base_path": str(ENVIRON.parent)},
                data={"config_file": (fh, ENVIRON.name)},
                headers=headers,
            )
        )
    yield tokens


RUN_BODY = {"input": '{"message": "hi"}'}


def test_a_read_token_reads_and_changes_nothing(
    client: FlaskClient, scoped: dict[str, str]
) -> None:
    read = bearer(scoped["read"])
    # Reads are served
    assert "QuickStart" in [d["name"] for d in ok(client.get("/deployments/", headers=read))]
    assert ok(client.get("/deployments/QuickStart/tasks", headers=read)) == []
    # Changes are refused with 403 naming the scope needed, and nothing is created
    for response, needs in (
        (client.post("/deployments/QuickStart/tasks/run", json=RUN_BODY, headers=read), "run"),
        (client.post("/deployments/QuickStart/tasks/create", json=RUN_BODY, headers=read), "run"),
        (client.post("/deployments/QuickStart/sessions/create", headers=read), "run"),
        (client.delete("/deployments/QuickStart", headers=read), "admin"),
    ):
        body = assert_error(response, 403)
        assert body["message"] == (
            f"this token's scope (read) does not allow {response.request.method} on this "
            f"route, which needs a token of scope {needs} (admin includes run, which "
            "includes read)"
        )
    assert ok(client.get("/deployments/QuickStart/sessions", headers=read)) == []
    assert all_tasks_as(client, read) == []


def all_tasks_as(client: FlaskClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    return ok(client.get("/deployments/QuickStart/tasks?limit=1000", headers=headers))  # type: ignore[no-any-return]


def test_a_run_token_runs_tasks_but_does_not_deploy(
    client: FlaskClient, scoped: dict[str, str]
) -> None:
    run = bearer(scoped["run"])
    # Tasks, sessions and reads are served
    assert ok(client.post("/deployments/QuickStart/tasks/run", json=RUN_BODY, headers=run)) == (
        "Message received: hi"
    )
    session = ok(client.post("/deployments/QuickStart/sessions/create", headers=run))
    assert ok(client.get(f"/deployments/QuickStart/sessions/{session['session_id']}", headers=run))
    # Deployments are not: nothing is replaced or deleted
    with QUICKSTART.open("rb") as fh:
        response = client.post(
            "/deployments/create",
            query_string={"base_path": str(QUICKSTART.parent), "reload": "true"},
            data={"config_file": (fh, QUICKSTART.name)},
            headers=run,
        )
    assert assert_error(response, 403)["message"].startswith("this token's scope (run)")
    assert_error(client.delete("/deployments/QuickStart", headers=run), 403)
    deployment = ok(client.get("/deployments/QuickStart", headers=run))
    assert deployment["version"] == 1


def test_an_admin_token_deploys_deletes_and_runs(
    client: FlaskClient, scoped: dict[str, str]
) -> None:
    admin = bearer(scoped["admin"])
    task = ok(client.post("/deployments/QuickStart/tasks/create", json=RUN_BODY, headers=admin))
    assert wait_for_admin(client, task["task_id"], admin)["status"] == "succeeded"
    assert client.delete("/deployments/QuickStart", headers=admin).status_code == 204
    assert "QuickStart" not in names(client, scoped["admin"])


def wait_for_admin(client: FlaskClient, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """``wait_for_task`` through a client that sends ``headers``."""
    client.environ_base["HTTP_AUTHORIZATION"] = headers["Authorization"]
    try:
        return wait_for_task(client, "QuickStart", task_id)
    finally:
        del client.environ_base["HTTP_AUTHORIZATION"]


def test_a_worker_token_fetches_specs_only(client: FlaskClient, scoped: dict[str, str]) -> None:
    worker = bearer(scoped["worker"])
    spec = ok(client.get("/deployments/Environ/spec", headers=worker))
    assert spec["env_redacted"] is False
    env = {name: s["env"] for name, s in spec["spec"]["services"].items()}
    assert any(values for values in env.values()), env
    for response in (
        client.get("/deployments/", headers=worker),
        client.get("/status/", headers=worker),
        client.post("/deployments/QuickStart/tasks/create", json=RUN_BODY, headers=worker),
    ):
        assert assert_error(response, 403)["message"].startswith("this token's scope (worker)")
    assert all_tasks_as(client, bearer(scoped["read"])) == []


@pytest.mark.parametrize("scope", ["admin", "run", "read"])
def test_other_scopes_see_a_spec_with_env_values_redacted(
    client: FlaskClient, scoped: dict[str, str], scope: str
) -> None:
    worker_view = ok(client.get("/deployments/Environ/spec", headers=bearer(scoped["worker"])))
    spec = ok(client.get("/deployments/Environ/spec", headers=bearer(scoped[scope])))
    assert spec["env_redacted"] is True
    for name, service in spec["spec"]["services"].items():
        clear = worker_view["spec"]["services"][name]["env"]
        assert service["env"] == dict.fromkeys(clear, "<redacted>")
        assert {k: v for k, v in service.items() if k != "env"} == {
            k: v for k, v in worker_view["spec"]["services"][name].items() if k != "env"
        }


def test_a_token_notes_its_last_use_at_most_once_a_minute(
    server: Server, client: FlaskClient
) -> None:
    # Given a token never used
    admin = token(server, "admin", "noted")

    def last_used() -> dt.datetime | None:
        with server.plane.db.peek() as conn:
            value: dt.datetime | None = conn.execute(
                select(_TOKENS.c.last_used_at).where(_TOKENS.c.name == "noted")
            ).scalar_one()
        return value

    assert last_used() is None
    # When it is used twice in a row, the first use is noted and the second writes nothing
    ok(client.get("/status/", headers=bearer(admin)))
    first = last_used()
    assert first is not None
    ok(client.get("/status/", headers=bearer(admin)))
    assert last_used() == first
    # And a use over a minute after the last one noted is noted again (once the server reads
    # the token afresh: it trusts what it read for a second)
    earlier = first - dt.timedelta(minutes=2)
    with server.plane.db.connect() as conn:
        conn.execute(update(_TOKENS).where(_TOKENS.c.name == "noted").values(last_used_at=earlier))
    time.sleep(CACHE_SECONDS)
    ok(client.get("/status/", headers=bearer(admin)))
    noted = last_used()
    assert noted is not None and noted > first


def test_revoking_the_last_token_of_a_loopback_server_opens_it_again(
    server: Server, client: FlaskClient
) -> None:
    token(server, "admin", "only")
    assert_unauthorized(client.get("/status/"))
    server.plane.tokens.revoke("only")
    assert ok(client.get("/status/"))["status"] == "Healthy"


def test_every_route_is_in_the_access_table(client: FlaskClient) -> None:
    """A new route must say what it needs; the table names no route that is gone."""
    app = client.application
    routes = {
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    table = {(endpoint, method) for endpoint, needs in ROUTES.items() for method in needs}
    assert routes == table


# -- beyond loopback ------------------------------------------------------------------------------


def test_a_server_beyond_loopback_refuses_to_start_without_a_token(settings: Settings) -> None:
    with pytest.raises(ConfigError) as refused:
        Server(settings.replace(host="0.0.0.0"))
    assert "refusing to listen on 0.0.0.0 without an API token" in str(refused.value)
    assert "--insecure-no-auth" in str(refused.value)


def test_the_opt_out_starts_it_open_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(settings.replace(host="0.0.0.0", insecure_no_auth=True))
    try:
        assert "INSECURE: serving the API on 0.0.0.0 with no authentication" in caplog.text
        client = server.app.test_client()
        # Open to any name: the operator said so
        response = client.get("/status/", headers={"Host": "celeriac.example:4501"})
        assert ok(response)["status"] == "Healthy"
    finally:
        server.close()
        memory.Channel.queues.clear()


def test_a_server_beyond_loopback_whose_last_token_is_revoked_refuses_everyone(
    settings: Settings,
) -> None:
    # Given a server on 0.0.0.0 started with a token
    first = Server(settings)
    first.plane.tokens.create("admin", "only")
    first.close()
    server = Server(settings.replace(host="0.0.0.0"))
    try:
        client = server.app.test_client()
        # When its only token is revoked, then nothing is served without a token
        server.plane.tokens.revoke("only")
        assert_unauthorized(client.get("/status/"))
        assert_unauthorized(deploy(client, QUICKSTART))
        assert ok(client.get("/openapi.json"))["openapi"] == "3.1.0"
    finally:
        server.close()
        memory.Channel.queues.clear()


# -- the OpenAPI document -------------------------------------------------------------------------


def test_the_document_declares_the_schemes_and_each_operation_s_security(
    client: FlaskClient,
) -> None:
    document = ok(client.get("/openapi.json"))
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["basicAuth"]["scheme"] == "basic"
    paths = document["paths"]
    run = paths["/deployments/{deployment_name}/tasks/run"]["post"]
    assert run["security"] == [{"bearerAuth": ["run"]}, {"basicAuth": ["run"]}]
    assert {"401", "403", "415"} <= set(run["responses"])
    assert paths["/deployments/create"]["post"]["security"][0] == {"bearerAuth": ["admin"]}
    assert paths["/deployments/{deployment_name}/spec"]["get"]["security"] == [
        {"bearerAuth": ["read"]},
        {"basicAuth": ["read"]},
        {"bearerAuth": ["worker"]},
        {"basicAuth": ["worker"]},
    ]
    assert paths["/"]["get"]["security"] == []
    assert "401" not in paths["/"]["get"]["responses"]
    for path, item in paths.items():
        for method, operation in item.items():
            if method in {"get", "post", "delete"}:
                assert "security" in operation, (path, method)


def test_the_admin_can_run_every_scenario_as_before(server: Server, client: FlaskClient) -> None:
    """A protected server answers an admin's task like an open one."""
    admin = token(server, "admin")
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin}"
    deployed(client, QUICKSTART)
    assert ok(client.post("/deployments/QuickStart/tasks/run", json=RUN_BODY)) == (
        "Message received: hi"
    )
    assert len(all_tasks(client)) == 1


# -- the data folder ------------------------------------------------------------------------------


def test_a_server_keeps_its_data_folder_and_database_private(
    server: Server, client: FlaskClient
) -> None:
    """After a start and some writes, the folder is 0700 and SQLite's files 0600."""
    deployed(client, QUICKSTART)
    ok(client.post("/deployments/QuickStart/tasks/run", json=RUN_BODY))
    folder = server.settings.data_dir
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
    assert files, "no database file"
    assert set(files) <= {"celeriac.db", "celeriac.db-wal", "celeriac.db-shm"}
    assert set(files.values()) == {0o600}, files


def test_tokens_made_and_revoked_by_another_process_apply_within_a_second(
    server: Server, client: FlaskClient
) -> None:
    """``celeriac tokens`` writes the database from its own process: the server, which trusts
    what it read of the tokens for a second, follows within that second."""
    other = Tokens(Database(server.settings.sqlalchemy_url, pool_size=1))
    # Given an open server that just served a request
    ok(client.get("/status/"))
    # When another process makes the first token, the server needs one within a second
    admin = other.create("admin", "ops").token
    other.create("read", "kept")
    started = time.monotonic()
    poll(lambda: client.get("/status/").status_code, lambda status: status == 401, timeout=2.0)
    assert time.monotonic() - started <= CACHE_SECONDS + 0.5
    # And when it revokes the admin token, the server refuses it within a second
    ok(client.get("/status/", headers=bearer(admin)))
    other.revoke("ops")
    started = time.monotonic()
    poll(
        lambda: client.get("/status/", headers=bearer(admin)).status_code,
        lambda status: status == 401,
        timeout=2.0,
    )
    assert time.monotonic() - started <= CACHE_SECONDS + 0.5
