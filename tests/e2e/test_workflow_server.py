"""End to end: llama-agents-client drives a distributed Celeriac (Redis, PostgreSQL, processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Platform, node
from tests.support import workflow_server as scenario
from tests.support.workflow_server import DEPLOYMENT, WSAPI, client_for


@pytest.mark.e2e
def test_llama_agents_client_drives_every_route(
    redis_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """API server, control-plane consumer and a service worker, each its own process: the
    unmodified client lists, runs, streams, answers, lists handlers, cancels and describes."""
    # Given a distributed Celeriac on Redis and PostgreSQL serving the WsApi deployment
    platform = make_platform(redis_url)
    platform.serve(WSAPI)
    platform.control_plane()
    platform.service_worker("ws", deployment=DEPLOYMENT)
    platform.wait_for_workers(DEPLOYMENT, {node("ws")})
    client = client_for(platform.server)

    async def everything() -> None:
        # When the client goes through every route
        await scenario.discovery(client)
        completed = {await scenario.run_and_wait(client)}
        streamed = await scenario.stream_live(client)
        await scenario.resume(client, streamed)
        completed |= {streamed, await scenario.human_in_the_loop(client)}
        failed = {await scenario.failure(client)}
        await scenario.handlers(client, completed, failed)
        await scenario.cancel(client, streamed)
        await scenario.describe(client)
        await scenario.custom_event(client)

    # Then each scenario's assertions hold across processes
    asyncio.run(everything())
