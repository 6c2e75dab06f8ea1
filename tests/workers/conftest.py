"""Fixtures of the worker tests: workflow folders on disk, a recording reporter, a runtime."""

from __future__ import annotations

import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.transport import memory

from workers import environ, loader
from workers.protocol import JournalWritten, RunStep, StepEvent, StepFinished, StepStarted
from workers.runtime import ServiceRuntime

#: A one-step workflow whose result is the Python expression ``{result}`` (with ``ev``, the
#: StartEvent, and ``os`` in scope). ``{preamble}`` goes at module level.
WORKFLOW_TEMPLATE = '''\
"""A workflow written by a test."""

from __future__ import annotations

import asyncio
import builtins
import os

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

{preamble}


class Progress(Event):
    """A progress report."""

    n: int


class TestWorkflow(Workflow):
    """Waits ``ev.sleep`` seconds, streams ``ev.events`` progress reports, then answers.

    With ``ev.fail`` (a builtin exception's name) it raises that exception instead.
    """

    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(float(ev.get("sleep", 0)))
        for n in range(int(ev.get("events", 0))):
            ctx.write_event_to_stream(Progress(n=n))
        if ev.get("fail"):
            raise getattr(builtins, ev.get("fail"))("the workflow failed on purpose")
        return StopEvent(result={result})


wf = TestWorkflow(timeout=30)
'''


def write_workflow(
    folder: Path, result: str = '"done"', *, module: str = "workflow", preamble: str = ""
) -> Path:
    """Write a workflow module (``<module>:wf``) into ``folder``; return the module's file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(WORKFLOW_TEMPLATE.format(result=result, preamble=preamble))
    return path


def write_file(path: Path, text: str) -> Path:
    """Write dedented ``text`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def unique_name(prefix: str = "CELERIAC_TEST") -> str:
    """A name that no other test (or the process environment) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12].upper()}"


def run_step(deployment: str, service: str, **kwargs: object) -> RunStep:
    """A RunStep for one service with ``kwargs`` as the run input."""
    return RunStep(
        task_id=uuid.uuid4().hex,
        session_id=uuid.uuid4().hex,
        deployment=deployment,
        service=service,
        input=dict(kwargs),
    )


class RecordingReporter:
    """A Reporter that keeps every message, in the order it arrived, from any thread."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, StepStarted | StepEvent | StepFinished]] = []
        #: What durable runs journaled, in the order it was sent.
        self.journal_messages: list[JournalWritten] = []
        self._lock = threading.Lock()

    def started(self, message: StepStarted) -> None:
        """Record a start."""
        self._add("started", message)

    def event(self, message: StepEvent) -> None:
        """Record an event."""
        self._add("event", message)

    def finished(self, message: StepFinished) -> None:
        """Record an outcome."""
        self._add("finished", message)

    def journal(self, message: JournalWritten) -> None:
        """Record what a durable run journaled."""
        with self._lock:
            self.journal_messages.append(message)

    @property
    def kinds(self) -> list[str]:
        """The kinds of the messages, in order."""
        with self._lock:
            return [kind for kind, _ in self.messages]

    @property
    def events(self) -> list[StepEvent]:
        """The streamed events, in order."""
        with self._lock:
            return [m for kind, m in self.messages if isinstance(m, StepEvent)]

    @property
    def finished_messages(self) -> list[StepFinished]:
        """The outcomes (there should be exactly one per run)."""
        with self._lock:
            return [m for kind, m in self.messages if isinstance(m, StepFinished)]

    def _add(self, kind: str, message: StepStarted | StepEvent | StepFinished) -> None:
        with self._lock:
            self.messages.append((kind, message))


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Undo what loading user workflows does to ``sys.path`` and ``sys.modules``."""
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    added = [Path(entry) for entry in sys.path if entry not in path]
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        # Only user code: libraries imported lazily during the test must keep their identity.
        file = getattr(sys.modules[name], "__file__", None) or ""
        user_file = any(Path(file).is_relative_to(folder) for folder in added)
        if name.startswith(loader.ROOT_PACKAGE) or user_file:
            del sys.modules[name]


@pytest.fixture
def scoped_environ() -> None:
    """``os.environ`` made overlay-aware, as every worker process does at start."""
    environ.install()


@pytest.fixture
def reporter() -> RecordingReporter:
    """A reporter that records what a run reports."""
    return RecordingReporter()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ServiceRuntime]:
    """A service runtime with its own sources folder; its event loop stops afterwards."""
    rt = ServiceRuntime(tmp_path / "sources", worker_name="test-worker")
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def memory_broker() -> Iterator[None]:
    """Leave the process-wide memory broker empty after the test."""
    try:
        yield
    finally:
        memory.Channel.queues.clear()
