"""The service runtime: keeps the deployments this process serves and runs their workflows."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from workflows import Workflow

from config.deployment import DeploymentSpec
from workers import environ, loader
from workers.errors import UnknownDeployment, WorkerError
from workers.eventloop import LoopThread
from workers.protocol import RunStep, StepEvent, StepFinished, StepStarted, service_queue
from workers.sources import sync_source


class Reporter(Protocol):
    """Where a run's progress goes: the control plane in production, a list in tests."""

    def started(self, message: StepStarted) -> None:
        """A worker took the task."""

    def event(self, message: StepEvent) -> None:
        """The workflow streamed an event."""

    def finished(self, message: StepFinished) -> None:
        """The run ended."""


@dataclass(frozen=True)
class LoadedService:
    """A service ready to run: its workflow object and its own environment."""

    workflow: Workflow
    env: dict[str, str]


@dataclass
class _Installed:
    spec: DeploymentSpec
    base_path: Path
    services: dict[str, LoadedService] = field(default_factory=dict)


class ServiceRuntime:
    """Runs workflow steps for the deployments installed in this process."""

    def __init__(self, sources_dir: Path, worker_name: str = "celeriac") -> None:
        self.sources_dir = sources_dir
        self.worker_name = worker_name
        self.loop = LoopThread()
        self._installed: dict[str, _Installed] = {}
        self._lock = threading.RLock()

    # -- what this process serves -------------------------------------------------------------

    def install(self, spec: DeploymentSpec, base_path: Path) -> list[str]:
        """Serve ``spec`` (replacing an older version) and return its queues."""
        environ.install()
        with self._lock:
            self._installed[spec.name] = _Installed(spec, base_path)
        return [service_queue(spec.name, sid) for sid in spec.services]

    def remove(self, name: str) -> None:
        """Stop serving a deployment."""
        with self._lock:
            self._installed.pop(name, None)

    def served(self) -> list[str]:
        """Names of the deployments this process serves."""
        with self._lock:
            return sorted(self._installed)

    def load(self, deployment: str, service_id: str) -> LoadedService:
        """The service's workflow, synced and imported on first use, then cached."""
        with self._lock:
            installed = self._installed.get(deployment)
            if installed is None:
                raise UnknownDeployment(f"deployment {deployment!r} is not served by this worker")
            loaded = installed.services.get(service_id)
            if loaded is not None:
                return loaded
            spec = installed.spec.services.get(service_id)
            if spec is None:
                raise UnknownDeployment(
                    f"deployment {deployment!r} has no service {service_id!r} on this worker"
                )
            root = sync_source(deployment, spec, installed.base_path, self.sources_dir)
            env = loader.service_environment(spec, root)
            loaded = LoadedService(loader.load_workflow(deployment, spec, root, env), env)
            installed.services[service_id] = loaded
            return loaded

    # -- running ------------------------------------------------------------------------------

    def run(self, step: RunStep, reporter: Reporter) -> StepFinished:
        """Run one step to its end, reporting start, every event and the outcome."""
        reporter.started(StepStarted(task_id=step.task_id, worker=self.worker_name, at=time.time()))
        counter = _Counter()
        try:
            service = self.load(step.deployment, step.service)
            future = self.loop.submit(_execute(service, step, reporter, counter))
            result = future.result()
        except WorkerError as exc:
            outcome = _failure(step, exc, counter.value, with_traceback=False)
        except Exception as exc:
            outcome = _failure(step, exc, counter.value, with_traceback=True)
        else:
            outcome = StepFinished(
                task_id=step.task_id,
                ok=True,
                result=jsonable(result),
                error=None,
                event_count=counter.value,
                at=time.time(),
            )
        reporter.finished(outcome)
        return outcome

    def close(self) -> None:
        """Stop the event loop."""
        self.loop.stop()


class _Counter:
    """How many events a run has streamed so far."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value - 1


async def _execute(
    service: LoadedService, step: RunStep, reporter: Reporter, counter: _Counter
) -> Any:
    """Run the workflow under the service's environment, forwarding streamed events in order."""
    with environ.scoped(service.env):
        handler = service.workflow.run(**step.input)
        async for event in handler.stream_events():
            reporter.event(
                StepEvent(
                    task_id=step.task_id,
                    seq=counter.next(),
                    event=describe_event(event),
                    at=time.time(),
                )
            )
        return await handler


def describe_event(event: Any) -> dict[str, Any]:
    """A streamed event as JSON: its type, qualified name and fields."""
    cls = type(event)
    data = event.model_dump() if isinstance(event, BaseModel) else event
    return {
        "type": cls.__name__,
        "qualified_name": f"{cls.__module__}.{cls.__qualname__}",
        "data": jsonable(data),
    }


def jsonable(value: Any) -> Any:
    """A JSON-safe form of a workflow's value (pydantic models dumped, the rest ``str()``)."""
    return to_jsonable_python(value, fallback=str)


def _failure(
    step: RunStep, exc: BaseException, events: int, *, with_traceback: bool
) -> StepFinished:
    error: dict[str, Any] = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc) or type(exc).__name__,
    }
    if with_traceback:
        error["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
    return StepFinished(
        task_id=step.task_id, ok=False, result=None, error=error, event_count=events, at=time.time()
    )
