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
