"""The soak's deployment: one service whose input says what kind of task to be, and whose
every run notes itself in a file, so that runs are counted apart from Celeriac's records."""

from __future__ import annotations

from pathlib import Path

DEPLOYMENT = "Soak"
SERVICE = "work"

YAML = f"""\
name: {DEPLOYMENT}

control-plane: {{}}

default-service: {SERVICE}

services:
  {SERVICE}:
    name: Soak
    source:
      type: local
      name: ./src
    path: workflow:soak_workflow
"""

CODE = '''\
"""Quick, slow, failing, asking and session tasks in one workflow, chosen by ``kind``."""

import asyncio
import os
import time

from workflows import Context, Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class PlannedFailure(Exception):
    """The failure a ``fail`` task is meant to end with."""


class SoakWorkflow(Workflow):
    """Note the run in ``log`` (task, kind, time, pid), sleep ``seconds``, then by kind:
    answer, raise, ask a person, or count the session's tasks in ``ctx.store``."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent | StopEvent:
        """Note the run, sleep, then act by kind."""
        tag, kind = ev.get("tag"), ev.get("kind")
        with open(ev.get("log"), "a") as out:
            out.write(f"{tag} {kind} {time.time():.3f} {os.getpid()}\\n")
        await asyncio.sleep(float(ev.get("seconds", 0)))
        if kind == "ask":
            return InputRequiredEvent(prefix=f"the answer for {tag}?")
        if kind == "fail":
            raise PlannedFailure(f"planned failure of {tag}")
        if kind == "session":
            count = await ctx.store.get("count", default=0)
            await ctx.store.set("count", count + 1)
            return StopEvent(result=f"{tag} after {count}")
        return StopEvent(result=f"done {tag}")

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        """The person's answer is the result."""
        return StopEvent(result=ev.response)


soak_workflow = SoakWorkflow(timeout=600)
'''

#: What a ``fail`` task's error message holds.
PLANNED_FAILURE = "planned failure of"


def write(folder: Path) -> Path:
    """Write the deployment into ``folder``; its YAML file."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "src" / "workflow.py").write_text(CODE)
    path = folder / "deployment.yml"
    path.write_text(YAML)
    return path


def expected_result(task_id: str, kind: str, earlier_in_session: int = 0) -> str | None:
    """The result a task of this kind must end with (``None`` for one that must fail)."""
    if kind == "fail":
        return None
    if kind == "ask":
        return answer_for(task_id)
    if kind == "session":
        return f"{task_id} after {earlier_in_session}"
    return f"done {task_id}"


def answer_for(task_id: str) -> str:
    """What the soak answers a task that asks."""
    return f"answer {task_id}"
