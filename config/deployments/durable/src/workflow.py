"""Drafts a text, checks it, then asks a person to approve it before it is published.

Each step is a stand-in for a slow, costly call (an LLM, say): on a durable service, a run
whose worker is lost resumes after the last step that finished, and the wait for the
person's answer holds no worker.
"""

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)


class Drafted(Event):
    """A first draft."""

    text: str


class Checked(Event):
    """A draft that passed the checks."""

    text: str


class ReviewWorkflow(Workflow):
    """Draft, check, ask for approval, publish."""

    @step
    async def draft(self, ctx: Context, ev: StartEvent) -> Drafted:
        """Write the draft (the expensive part)."""
        topic = ev.get("topic", "celeriac")
        await ctx.store.set("topic", topic)
        return Drafted(text=f"A short note on {topic}.")

    @step
    async def check(self, ev: Drafted) -> Checked:
        """Check the draft."""
        return Checked(text=ev.text.strip())

    @step
    async def approve(self, ctx: Context, ev: Checked) -> StopEvent:
        """Ask a person; this step runs again from its top once the answer comes."""
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_id="approval",
            waiter_event=InputRequiredEvent(prefix=f"Publish this? {ev.text} (yes/no)"),  # type: ignore[call-arg]
        )
        topic = await ctx.store.get("topic")
        published = answer.response.strip().lower() in {"y", "yes"}
        return StopEvent(result={"topic": topic, "text": ev.text, "published": published})


review_workflow = ReviewWorkflow(timeout=None)
