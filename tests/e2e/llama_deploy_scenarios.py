"""LlamaDeploy 0.8.1's Python ``Client`` against a Celeriac server, as its users call it.

Run by ``test_llama_deploy_clients.py`` with the interpreter of a separate environment that has
``llama-deploy==0.8.1`` (it pins an older llama-index, so it cannot share Celeriac's). Usage:
``python llama_deploy_scenarios.py SERVER_URL FIXTURES_FOLDER``; prints one JSON object with what
each scenario saw, for the test to check.
"""

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from llama_deploy import Client
from llama_deploy.types import TaskDefinition
from llama_index.core.workflow.events import HumanResponseEvent

POLL = 0.1


async def deploy(client: Client, path: Path) -> Any:
    """Create a deployment from a file, with its folder as the base path."""
    with path.open() as config:
        return await client.apiserver.deployments.create(config, base_path=str(path.parent))


async def results(task: Any) -> Any:
    """Poll a task's results until it has one."""
    for _ in range(int(30 / POLL)):
        result = await task.results()
        if result is not None and result.result is not None:
            return result.result
        await asyncio.sleep(POLL)
    raise TimeoutError(f"task {task.id} has no result")


async def main(server: str, fixtures: Path) -> dict[str, Any]:
    """Every scenario, in order; what each saw."""
    client = Client(api_server_url=server, timeout=30, poll_interval=POLL)
    e2e = fixtures / "e2e_tests" / "apiserver" / "deployments"
    seen: dict[str, Any] = {}

    quick_start = await deploy(client, fixtures / "examples" / "quick_start" / "quick_start.yml")
    seen["deployed"] = quick_start.id
    # Not deployments.list() nor tasks.list(): 0.8.1's Client cannot read its own server's
    # answers to them (it takes each item for a name, or for an object with attributes).
    seen["got"] = (await client.apiserver.deployments.get("QuickStart")).id
    status = await client.apiserver.status()
    seen["status"] = [status.status.value, status.deployments]

    run = TaskDefinition(input=json.dumps({"message": "from the Client"}))
    seen["run"] = await quick_start.tasks.run(run)

    session = await quick_start.sessions.create()
    in_session = TaskDefinition(input=json.dumps({"message": "in a session"}))
    in_session.session_id = session.session_id
    task = await quick_start.tasks.create(in_session)
    seen["session_task"] = [task.session_id == session.session_id, await results(task)]
    seen["sessions"] = [s["session_id"] for s in await quick_start.sessions.list()]
    await quick_start.sessions.delete(session.session_id)
    seen["sessions_after_delete"] = await quick_start.sessions.list()

    streaming = await deploy(client, e2e / "deployment_streaming.yml")
    task = await streaming.tasks.create(TaskDefinition(input="{}"))
    seen["stream"] = [event.get("text") async for event in task.events()]
    seen["stream_result"] = await results(task)

    hitl = await deploy(client, e2e / "deployment_hitl.yml")
    task = await hitl.tasks.create(TaskDefinition(input="{}"))
    async for event in task.events():
        if "prefix" in event:
            seen["question"] = event["prefix"]
            sent = await task.send_event(HumanResponseEvent(response="42"), "hitl_workflow")
            seen["sent_to"] = sent.service_id
            break
    seen["answer"] = await results(task)
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2])))))
