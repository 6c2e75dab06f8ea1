"""End to end: a distributed Celeriac with API tokens (Redis, PostgreSQL, processes)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.app.conftest import ENVIRON
from tests.e2e.conftest import Platform, node, script
from tests.support.processes import poll


def make_token(platform: Platform, scope: str) -> str:
    """``celeriac tokens create`` on the platform's database, as an operator runs it."""
    done = subprocess.run(
        [script("celeriac"), "tokens", "create", "--scope", scope],
        env=platform.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.e2e
def test_a_worker_fetches_its_spec_with_a_worker_token_and_other_scopes_see_env_redacted(
    redis_url: str, make_platform: Callable[[str], Platform]
) -> None:
    # Given a distributed Celeriac whose database has tokens before its API server starts
    platform = make_platform(redis_url)
    tokens = {scope: make_token(platform, scope) for scope in ("admin", "run", "read", "worker")}
    platform.http.headers.update(bearer(tokens["admin"]))
    # A server with tokens is not open: it takes local sources only from the folders named.
    platform.settings["CELERIAC_SOURCE_ROOTS"] = str(ENVIRON.parent)
    platform.serve(ENVIRON)
    platform.control_plane()
    # When a service worker starts with a read token, it stops and says which token it needs
    platform.settings["CELERIAC_TOKEN"] = tokens["read"]
    refused = platform.service_worker("reader", deployment="Environ", service="red")
    poll(lambda: refused.alive(), lambda alive: not alive, 60.0, "the read-token worker exiting")
    assert refused.popen.returncode != 0
    assert "withholds the env values of 'Environ'" in refused.output()
    assert tokens["read"] not in refused.output()
    # And one with a worker token serves the deployment
    platform.settings["CELERIAC_TOKEN"] = tokens["worker"]
    platform.service_worker("w1", deployment="Environ")
    platform.wait_for_workers("Environ", {node("w1")})
    # Then a task run with a run token sees its service's env values, fetched with the spec
    response = platform.http.post(
        "/deployments/Environ/tasks/run",
        json={"service_id": "red"},
        headers=bearer(tokens["run"]),
    )
    assert response.status_code == 200, response.text
    assert response.json() == "red/-"
    # And the spec shows those values to the worker token only
    for scope in ("admin", "run", "read"):
        spec = platform.http.get("/deployments/Environ/spec", headers=bearer(tokens[scope]))
        assert spec.status_code == 200, spec.text
        assert spec.json()["env_redacted"] is True
        assert spec.json()["spec"]["services"]["red"]["env"] == {
            "CELERIAC_TEST_COLOUR": "<redacted>"
        }
    spec = platform.http.get("/deployments/Environ/spec", headers=bearer(tokens["worker"]))
    assert spec.json()["spec"]["services"]["red"]["env"] == {"CELERIAC_TEST_COLOUR": "red"}
    # And a request without a token is refused
    anonymous = httpx.get(f"{platform.server}/deployments/Environ/spec", timeout=10)
    assert anonymous.status_code == 401


@pytest.mark.e2e
def test_the_database_and_broker_passwords_are_never_printed(
    amqp_url: str, make_platform: Callable[[str], Platform]
) -> None:
    # Given a platform whose database URL carries a password (the machine's PostgreSQL
    # trusts its local users, so any password is let in) and whose broker URL does too
    platform = make_platform(amqp_url)
    assert platform.database_url.startswith("postgresql+psycopg://postgres@")
    platform.database_url = platform.database_url.replace("postgres@", "postgres:hunter2@", 1)
    # When an operator upgrades the database, makes a token and starts the API server
    done = subprocess.run(
        [script("celeriac"), "db", "upgrade"],
        env=platform.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = make_token(platform, "admin")
    platform.http.headers.update(bearer(token))
    platform.settings["CELERIAC_SOURCE_ROOTS"] = str(ENVIRON.parent)
    api = platform.serve()
    # Then each says which database and broker it uses, with the passwords hidden
    assert done.returncode == 0, done.stderr
    assert "Database postgresql+psycopg://postgres:***@127.0.0.1" in done.stdout
    banner = api.output()
    assert "broker amqp://guest:***@127.0.0.1" in banner
    assert "database postgresql+psycopg://postgres:***@127.0.0.1" in banner
    for output in (done.stdout + done.stderr, banner):
        assert "hunter2" not in output
        assert "guest:guest" not in output
