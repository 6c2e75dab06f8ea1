"""Workflows that leave traces in files, so tests see what ran, when, and what never did."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from workflows import Context, Workflow, step
from workflows.events import (
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)


def _note(path: str, line: str) -> None:
    with Path(path).open("a") as trace:
        trace.write(line + "\n")


class NapWorkflow(Workflow):
    """Note the start in ``trace``, then sleep ``seconds`` (or wait for a person's answer,
    with ``ask``), note the end, and answer."""

    @step
    async def nap(self, ctx: Context, ev: StartEvent) -> StopEvent:
        trace = str(ev.get("trace"))
        _note(trace, f"start {time.time()}")
        try:
            if ev.get("ask"):
                ctx.write_event_to_stream(InputRequiredEvent(prefix="go on? "))
                answer = await ctx.wait_for_event(HumanResponseEvent)
                result = f"answered {answer.response}"
            else:
                seconds = float(ev.get("seconds", 0))
                await asyncio.sleep(seconds)
                result = f"slept {seconds:g}s"
        except asyncio.CancelledError:
            _note(trace, f"cancelled {time.time()}")
            raise
        _note(trace, f"end {time.time()}")
        return StopEvent(result=result)


class FlakyWorkflow(Workflow):
    """Note each run's start in ``trace``; fail with ``error`` (ConnectionError by default)
    until ``fail`` runs have failed, then answer."""

    @step
    async def attempt(self, ev: StartEvent) -> StopEvent:
        trace = Path(str(ev.get("trace")))
        runs = len(trace.read_text().splitlines()) if trace.exists() else 0
        _note(str(trace), f"start {time.time()}")
        if runs < int(ev.get("fail", 0)):
            kind = {"ValueError": ValueError}.get(str(ev.get("error")), ConnectionError)
            raise kind(f"run {runs + 1} fails")
        return StopEvent(result=f"succeeded on run {runs + 1}")


nap_workflow = NapWorkflow(timeout=120)
flaky_workflow = FlakyWorkflow(timeout=30)
