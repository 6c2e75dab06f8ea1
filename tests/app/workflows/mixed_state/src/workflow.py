"""Writes with ``ctx.set`` and reads with ``ctx.store.get``, and the other way round."""

from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent


class MixedWorkflow(Workflow):
    """Returns what the session's previous task stored, under both spellings, then stores
    this task's ``word``: with ``ctx.set``, and upper-cased with ``ctx.store.set``."""

    @step
    async def remember(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """Read the previous task's values crosswise, then write this task's."""
        previous = {
            "by_set": await ctx.store.get("by_set", default=None),
            "by_store": await ctx.get("by_store", default=None),
        }
        await ctx.set("by_set", ev.word)
        await ctx.store.set("by_store", ev.word.upper())
        now = {"by_set": await ctx.store.get("by_set"), "by_store": await ctx.get("by_store")}
        return StopEvent(result={"previous": previous, "now": now})


mixed_workflow = MixedWorkflow(timeout=60)
