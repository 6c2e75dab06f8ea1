"""The ``Pinned`` deployment of the version-pinning tests: one durable service that asks a
question, in two versions of its code (answers start with "old" or "new"), and three
deployment files (the first, one that changes the code, one that also renames the service)."""

from __future__ import annotations

import textwrap
from pathlib import Path

_FLOW = '''
from workflows import Context, Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class Asking(Workflow):
    """Asks, then answers with the answer and the version of this code."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_id="question",
            waiter_event=InputRequiredEvent(prefix="?"),
        )
        return StopEvent(result="{label}: " + answer.response)


asking = Asking(timeout=None)
'''


def _deployment_file(service: str, folder: str) -> str:
    return textwrap.dedent(
        f"""\
        name: Pinned
        control-plane: {{}}
        services:
          {service}:
            name: A question
            source: {{type: local, name: ./{folder}}}
            path: flow:asking
            celeriac:
              durable: true
        """
    )


def write_project(root: Path) -> Path:
    """Write the code (``v1``: "old", ``v2``: "new") and the files ``first.yml`` (service
    ``ask`` on v1), ``changed.yml`` (``ask`` on v2) and ``renamed.yml`` (``question`` on v2)
    under ``root``, the deployments' base path; returns ``root``."""
    for folder, label in (("v1", "old"), ("v2", "new")):
        (root / folder).mkdir(parents=True)
        (root / folder / "flow.py").write_text(_FLOW.replace("{label}", label))
    (root / "first.yml").write_text(_deployment_file("ask", "v1"))
    (root / "changed.yml").write_text(_deployment_file("ask", "v2"))
    (root / "renamed.yml").write_text(_deployment_file("question", "v2"))
    return root
