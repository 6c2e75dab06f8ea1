"""Counts the tasks of a session: its Context's store carries the count from task to task."""

from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent


class CounterWorkflow(Workflow):
    """Returns 1 for a session's first task, 2 for its second, and so on."""

    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """Add one to the session's counter."""
        counter = await ctx.store.get("counter", default=0) + 1
        await ctx.store.set("counter", counter)
        return StopEvent(result=str(counter))


counter_workflow = CounterWorkflow(timeout=60)
