"""Workflows written against llama-index-core, as LlamaDeploy deployments shipped them."""

from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step
from llama_index.core.workflow.events import HumanResponseEvent, InputRequiredEvent


class CounterWorkflow(Workflow):
    """Counts a session's tasks with the Context's 1.x state API."""

    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """Add one to the session's counter; the result is the count."""
        count = await ctx.get("count", default=0) + 1
        await ctx.set("count", count)
        return StopEvent(result=count)


class Progress(Event):
    """How far the workflow got."""

    done: int


class AskingWorkflow(Workflow):
    """Streams two progress events, asks a question, returns the answer with the count."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        """Report progress, remember the question, then ask it."""
        for done in (1, 2):
            ctx.write_event_to_stream(Progress(done=done))
        await ctx.set("question", ev.get("question", "?"))
        return InputRequiredEvent(prefix=await ctx.get("question"))

    @step
    async def answer(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        """The answer, after the question it answers."""
        return StopEvent(result=f"{await ctx.get('question')} {ev.response}")


counter_workflow = CounterWorkflow(timeout=60)
asking_workflow = AskingWorkflow(timeout=60)
