"""Workflows whose steps write each execution to a file (``log``), for durability tests.

Step ``three`` of the pipeline, once counted, waits while the file ``<log>.hold`` exists (at
most ``pause`` seconds): time for a test to kill the worker in the middle of it. A run that
resumes it later takes the same event (``pause`` included): the test removes the file first.
"""

import asyncio
from pathlib import Path

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)


def count(log: str, name: str) -> None:
    """Note one execution of step ``name``."""
    if log:
        with Path(log).open("a") as file:
            file.write(name + "\n")


class Two(Event):
    log: str
    pause: float


class Three(Event):
    log: str
    pause: float


class Four(Event):
    log: str


class Five(Event):
    log: str


class Pipeline(Workflow):
    """one -> two -> three (pauses) -> four -> five; the result sums what each step stored."""

    @step
    async def one(self, ctx: Context, ev: StartEvent) -> Two:
        count(ev.get("log", ""), "one")
        await ctx.store.set("one", 1)
        ctx.write_event_to_stream(Event(msg="one done"))
        return Two(log=ev.get("log", ""), pause=float(ev.get("pause", 0)))

    @step
    async def two(self, ctx: Context, ev: Two) -> Three:
        count(ev.log, "two")
        await ctx.store.set("two", 2)
        ctx.write_event_to_stream(Event(msg="two done"))
        return Three(log=ev.log, pause=ev.pause)

    @step
    async def three(self, ctx: Context, ev: Three) -> Four:
        count(ev.log, "three")
        hold = Path(ev.log + ".hold")
        waited = 0.0
        while hold.exists() and waited < ev.pause:
            await asyncio.sleep(0.02)
            waited += 0.02
        await ctx.store.set("three", 3)
        ctx.write_event_to_stream(Event(msg="three done"))
        return Four(log=ev.log)

    @step
    async def four(self, ctx: Context, ev: Four) -> Five:
        count(ev.log, "four")
        await ctx.store.set("four", 4)
        return Five(log=ev.log)

    @step
    async def five(self, ctx: Context, ev: Five) -> StopEvent:
        count(ev.log, "five")
        total = 0
        for name in ("one", "two", "three", "four"):
            total += await ctx.store.get(name)
        return StopEvent(result={"total": total + 5})


class Asked(Event):
    log: str


class Asking(Workflow):
    """first -> ask (waits for a HumanResponseEvent) -> the answer and what first stored."""

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Asked:
        count(ev.get("log", ""), "first")
        await ctx.store.set("first", "done")
        return Asked(log=ev.get("log", ""))

    @step
    async def ask(self, ctx: Context, ev: Asked) -> StopEvent:
        count(ev.log, "ask")
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_id="question",
            waiter_event=InputRequiredEvent(prefix="Your answer?"),  # type: ignore[call-arg]
        )
        return StopEvent(result={"answer": answer.response, "first": await ctx.store.get("first")})


class Impatient(Workflow):
    """Waits ``wait`` seconds for an answer, then goes on without one."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_id="question",
                waiter_event=InputRequiredEvent(prefix="Quick, your answer?"),  # type: ignore[call-arg]
                timeout=float(ev.get("wait", 1.0)),
            )
        except asyncio.TimeoutError:
            return StopEvent(result={"answer": None})
        return StopEvent(result={"answer": answer.response})


class Answered(Event):
    answer: str


class AskingMore(Workflow):
    """ask (waits for a HumanResponseEvent) -> tell: a step after the answer."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> Answered:
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_id="question",
            waiter_event=InputRequiredEvent(prefix="Your answer?"),  # type: ignore[call-arg]
        )
        return Answered(answer=answer.response)

    @step
    async def tell(self, ev: Answered) -> StopEvent:
        return StopEvent(result={"answer": ev.answer})


pipeline = Pipeline(timeout=None)
impatient = Impatient(timeout=None)
asking = Asking(timeout=None)
asking_more = AskingMore(timeout=None)
