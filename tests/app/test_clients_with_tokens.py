"""Clients that carry a token: the SDK (sync and async) and llama-agents-client."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from flask.testing import FlaskClient
from llama_agents.client import WorkflowClient

from app.sdk import AsyncClient, Client, Forbidden, Unauthorized
from app.server import Server
from tests.app.conftest import ENVIRON, deployed
from tests.conftest import QUICKSTART
from tests.support import workflow_server as scenario
from tests.support.workflow_server import DEPLOYMENT, WSAPI, client_for
from workers.catalog import http_fetcher
from workers.errors import TokenRefused


@pytest.fixture
def tokens(server: Server, client: FlaskClient, live_server: str) -> dict[str, str]:
    """The quick start and the workflow-server deployment, then a token of each scope."""
    deployed(client, QUICKSTART)
    deployed(client, WSAPI)
    deployed(client, ENVIRON)
    return {s: server.plane.tokens.create(s).token for s in ("admin", "run", "read", "worker")}


def test_the_sdk_sends_its_token(live_server: str, tokens: dict[str, str]) -> None:
    with Client(live_server, token=tokens["run"]) as sdk:
        assert sdk.tasks.run("QuickStart", {"message": "hi"}) == "Message received: hi"
        events = list(sdk.tasks.events("QuickStart", sdk.tasks.create("QuickStart", {}).task_id))
        assert events[-1].type == "StopEvent"


def test_the_sdk_raises_unauthorized_and_forbidden(
    live_server: str, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)
    with Client(live_server) as anonymous, pytest.raises(Unauthorized) as missing:
        anonymous.deployments.list()
    assert missing.value.status_code == 401
    assert str(missing.value).startswith("this server needs a live API token")
    with Client(live_server, token=tokens["read"]) as reader, pytest.raises(Forbidden) as denied:
        reader.tasks.create("QuickStart", {"message": "no"})
    assert denied.value.status_code == 403
    assert tokens["read"] not in str(denied.value) and tokens["read"] not in repr(reader.__dict__)


def test_the_sdk_takes_the_token_from_the_environment(
    live_server: str, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_TOKEN", tokens["read"])
    with Client(live_server) as sdk:
        assert sorted(d.name for d in sdk.deployments.list()) == [
            "Environ",
            "QuickStart",
            DEPLOYMENT,
        ]
    # An explicit empty token sends none
    with Client(live_server, token="") as sdk, pytest.raises(Unauthorized):
        sdk.deployments.list()


def test_the_async_sdk_sends_its_token(live_server: str, tokens: dict[str, str]) -> None:
    async def run() -> object:
        async with AsyncClient(live_server, token=tokens["run"]) as sdk:
            return await sdk.tasks.run("QuickStart", {"message": "async"})

    assert asyncio.run(run()) == "Message received: async"


def test_llama_agents_client_passes_a_token_in_its_httpx_client(
    live_server: str, tokens: dict[str, str]
) -> None:
    """As the README tells: ``WorkflowClient(httpx_client=httpx.AsyncClient(base_url=...,
    headers={"Authorization": "Bearer ..."}))``."""

    async def everything() -> None:
        headers = {"Authorization": f"Bearer {tokens['run']}"}
        async with httpx.AsyncClient(
            base_url=f"{live_server}/deployments/{DEPLOYMENT}", headers=headers, timeout=30
        ) as http:
            client = WorkflowClient(httpx_client=http)
            await scenario.discovery(client)
            await scenario.run_and_wait(client)
            streamed = await scenario.stream_live(client)
            await scenario.resume(client, streamed)
            await scenario.human_in_the_loop(client)
        # Without the token, the same client is refused
        refused = await scenario.http_error(client_for(live_server).list_workflows())
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="celeriac"'

    asyncio.run(everything())


def test_a_service_worker_fetches_its_spec_with_a_worker_token(
    live_server: str, tokens: dict[str, str]
) -> None:
    # A worker token gets the spec with its env values
    source = http_fetcher(live_server, token=tokens["worker"])("Environ")
    assert source.spec.services["red"].env == {"CELERIAC_TEST_COLOUR": "red"}
    # Any other scope gets them withheld, and the worker says which token it needs
    with pytest.raises(TokenRefused) as redacted:
        http_fetcher(live_server, token=tokens["admin"])("Environ")
    assert "withholds the env values of 'Environ'" in str(redacted.value)
    assert "token of scope worker" in str(redacted.value)
    # No token, or a wrong one, is refused
    for token in ("", "clr_wrong"):
        with pytest.raises(TokenRefused) as refused:
            http_fetcher(live_server, token=token)("Environ")
        assert "refused this worker (401)" in str(refused.value)
        assert "clr_wrong" not in str(refused.value)
