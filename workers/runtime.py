"""The service runtime: keeps the deployments this process serves and runs their workflows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workflows import Context
from workflows.context.serializers import JsonSerializer
from workflows.events import IdleReleasedEvent

from config.deployment import DeploymentSpec
from config.sources import SourcePolicy
from workers import environ, legacy_context, loader
from workers.durable import Journaling, Journals, Names, restore, service_package
from workers.errors import (
    ControlPlaneUnreachable,
    HandedBack,
    ResultTooLarge,
    UnknownDeployment,
    WorkerError,
    WorkflowStateError,
)
from workers.eventloop import LoopThread
from workers.inbox import Inbox
from workers.protocol import (
    DeliverEvent,
    JournalReplay,
    RunStep,
    StepFinished,
    StopRuns,
    inbox_queue,
    service_queue,
)
from workers.runs import (
    STARTED_GRACE,
    STOP_GRACE,
    TIMED_OUT,
    Reporter,
    ResultBounds,
    Run,
    RunStopped,
    error_of,
    jsonable,
    stopped_error,
)
from workers.sources import sync_source
from workers.stops import Stops
from workers.versions import Fetch, FetchVersion, LoadedService, Versions

logger = logging.getLogger(__name__)


#: Tells the control plane what a service's workflow is, the first time this process runs it
#: (see ``ServiceRuntime.announce``).
Announce = Callable[[str, str, int, "LoadedService"], None]


class ServiceRuntime:
    """Runs workflow steps for the deployments installed in this process."""

    def __init__(
        self,
        sources_dir: Path,
        worker_name: str | None = None,
        fetch: Fetch | None = None,
        *,
        source_policy: Callable[[], SourcePolicy] | None = None,
        result_bounds: ResultBounds | None = None,
        release_after: float | None = 30.0,
        fetch_version: FetchVersion | None = None,
    ) -> None:
        self.sources_dir = sources_dir
        self.worker_name = worker_name
        #: The deployment versions this process holds (and how it fetches others).
        self.versions = Versions(fetch, fetch_version)
        #: Where this process takes sources from; asked at each load (the embedded server
        #: points it at its own policy, which changes once a token exists).
        self.source_policy = source_policy or (
            lambda: SourcePolicy(roots=None, git_schemes=frozenset({"https"}))
        )
        self.result_bounds = result_bounds or ResultBounds()
        #: Seconds a durable run waits for input before it is let go (None: never).
        self.release_after = release_after
        #: How durable runs get their task's journal (set with the Celery app).
        self.journals: Journals | None = None
        #: Called with (deployment, service, version, loaded) before a service's first run
        #: of a version in this process: the control plane then knows the events the
        #: workflow takes (to check events sent in) without asking a worker, whose threads
        #: may all be busy with runs waiting for those very events.
        self.announce: Announce | None = None
        self._announced: set[tuple[str, str, int]] = set()
        self.loop = LoopThread()
        self.inbox = Inbox()
        #: The runs the control plane stopped (see ``workers.stops``).
        self.stops = Stops()
        self._lock = threading.RLock()
        # The runs in progress, by task id, with the futures their threads wait on.
        self._runs: dict[str, tuple[Run, concurrent.futures.Future[Any]]] = {}
        # The tasks this process holds, from the step's arrival until its outcome was sent:
        # each heartbeat lists them, which renews their leases (see ``held``).
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()

    # -- what this process serves -------------------------------------------------------------

    def install(self, spec: DeploymentSpec, base_path: Path, version: int = 1) -> list[str]:
        """Serve ``spec`` (replacing an older version, which stays loaded for the durable
        runs that started on it) and return its queues."""
        environ.install()
        legacy_context.install()
        with self._lock:
            self.versions.install(spec, base_path, version)
        return [service_queue(spec.name, sid) for sid in spec.services]

    def remove(self, name: str) -> None:
        """Stop serving a deployment (any version of it)."""
        with self._lock:
            self.versions.remove(name)

    def served(self) -> list[str]:
        """Names of the deployments this process serves."""
        with self._lock:
            return self.versions.served()

    def load(
        self, deployment: str, service_id: str, version: int = 1, *, exact: bool = False
    ) -> LoadedService:
        """The service's workflow, synced and imported on first use, then cached.

        A deployment this process does not know, or knows in an older version, is fetched
        from the control plane first (when the runtime was given a way to fetch). ``exact``
        (a durable run, which resumes on the version it started on): exactly ``version``,
        fetched by number if this process lacks it (see ``workers.versions``); each
        version's code is imported under its own private package.
        """
        with self._lock:
            installed = self.versions.find(deployment, version, exact=exact)
            loaded = installed.services.get(service_id)
            if loaded is not None:
                return loaded
            spec = installed.spec.services.get(service_id)
            if spec is None:
                in_version = f" in version {version}" if exact else ""
                raise UnknownDeployment(
                    f"deployment {deployment!r} has no service {service_id!r}{in_version} "
                    "on this worker"
                )
            layout = sync_source(
                deployment,
                spec,
                installed.base_path,
                self.sources_dir,
                self.source_policy(),
                version=installed.version if exact else None,
            )
            env = loader.service_environment(spec, layout)
            workflow = loader.load_workflow(deployment, spec, layout, env, installed.version)
            loaded = LoadedService(workflow, env)
            installed.services[service_id] = loaded
            return loaded

    @property
    def inbox_queue(self) -> str:
        """The queue through which events reach the tasks this process runs."""
        return inbox_queue(self.worker_name or "celeriac", os.getpid())

    # -- running ------------------------------------------------------------------------------

    def held(self) -> list[str]:
        """The ids of the tasks this process runs now, or whose outcome it is sending."""
        with self._held_lock:
            return sorted(self._held)

    def run(
        self, step: RunStep, reporter: Reporter, *, redelivered: bool = True
    ) -> StepFinished | None:
        """Run one step to its end, reporting its start, every event and the outcome; None
        for a run the control plane stopped before it began (nothing is reported).

        The task is held (listed in heartbeats) from before its run's start time until its
        outcome is in the broker: a heartbeat sent after the start report either lists it or
        follows the outcome, so the control plane never takes a task that is still being run
        for a lost one."""
        if not self.stops.wait_known():
            # The list did not come (the worker stops, or no control plane answers): the run
            # must not start, and its step goes back to the queue.
            raise HandedBack(f"task {step.task_id}: no list of stopped runs came; not started")
        stopped = self.stops.reason(step.task_id, step.run)
        if stopped is not None:
            logger.info("task %s (run %d) was %s: not started", step.task_id, step.run, stopped)
            return None
        self._hold(step.task_id, +1)
        try:
            return self._run(step, reporter, redelivered)
        finally:
            self._hold(step.task_id, -1)

    def _hold(self, task_id: str, change: int) -> None:
        # Counted: a redelivery may bring a step to the worker that already runs it.
        with self._held_lock:
            count = self._held.get(task_id, 0) + change
            if count > 0:
                self._held[task_id] = count
            else:
                self._held.pop(task_id, None)

    def _run(self, step: RunStep, reporter: Reporter, redelivered: bool) -> StepFinished:
        run = Run(
            step, self.worker_name or "celeriac", self.inbox_queue, reporter, self.result_bounds
        )
        if step.expires_at is not None and run.started_at > step.expires_at:
            late = run.started_at - step.expires_at
            outcome = run.outcome(
                error=stopped_error(
                    "QueueTimeout",
                    f"the task waited in the queue past its queue-timeout ({late:.1f} s too "
                    "long): it was not started",
                ),
                stopped=TIMED_OUT,
            )
            reporter.finished(outcome)
            return outcome
        try:
            service = self.load(step.deployment, step.service, step.version, exact=step.durable)
            self._announce(step, service)
            replay = self._replay(step, run, redelivered)
            future = self.loop.submit(self._execute(service, step, run, replay))
            self._runs[step.task_id] = (run, future)
            try:
                result = self._await(run, future)
            except concurrent.futures.CancelledError:
                if not run.handed_back:
                    raise  # the workflow's own cancellation: an error, as any other
                raise HandedBack(f"task {step.task_id} was waiting for input") from None
            finally:
                self._runs.pop(step.task_id, None)
        except (ControlPlaneUnreachable, HandedBack):
            raise  # not the task's fault: the step is tried again, not failed
        except RunStopped as exc:
            outcome = run.outcome(error=exc.error, stopped=exc.reason)
        except WorkerError as exc:
            outcome = run.failed(exc, with_traceback=False)
        except Exception as exc:
            outcome = run.failed(exc, with_traceback=True)
        else:
            outcome = self._outcome_of(run, result)
        reporter.finished(outcome)
        return outcome

    def _replay(self, step: RunStep, run: Run, redelivered: bool) -> JournalReplay | None:
        """A durable step's journal, asked of the control plane (but for a run's first
        message, first delivered: it has none); None for other steps. The run's events are
        numbered on from those the task streamed so far."""
        if not step.durable:
            return None
        if step.fresh and not redelivered:
            return JournalReplay(
                wanted="",
                task_id=step.task_id,
                epoch=0,
                snapshot=None,
                records=[],
                state=None,
                inputs=-1,
                next_seq=step.first_seq,
            )
        if self.journals is None:
            raise WorkerError("this worker cannot run durable steps: it has no way to the journal")
        replay = self.journals.fetch(step.task_id, step.run, self.inbox_queue)
        run.count = max(run.count, replay.next_seq)
        return replay

    def _await(self, run: Run, future: concurrent.futures.Future[Any]) -> Any:
        """The run's result, once its workflow ends; :class:`RunStopped` if it is stopped
        first (its time limit, or the control plane's word), after the workflow was asked to
        stop and given :data:`STOP_GRACE` seconds to do so.

        Waits with ``wait``, not ``result(timeout)``: the workflow's own TimeoutError is the
        same class as the future's, and must not read as "still running"."""
        done, _ = concurrent.futures.wait([future], timeout=STARTED_GRACE)
        if not done:
            run.report_started()
        limit = run.step.time_limit
        deadline = None if limit is None else run.started_at + limit
        while not future.done():
            left = None if deadline is None else max(deadline - time.time(), 0.0)
            concurrent.futures.wait(
                [future, run.stop_asked],
                timeout=left,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            if future.done():
                break
            if not run.stop_asked.done():
                if deadline is None or time.time() < deadline:
                    continue
                run.stop_asked.set_result(TIMED_OUT)
            raise run.stop(future)
        return future.result()

    def stop_runs(self, message: StopRuns) -> int:
        """Note the runs the control plane stopped, and stop those that run here; returns
        how many were running."""
        self.stops.note(message.runs, message.reason, complete=message.complete)
        stopped = 0
        for task_id, number in message.runs:
            in_progress = self._runs.get(task_id)
            if in_progress is None:
                continue
            run = in_progress[0]
            if number and run.step.run and run.step.run > number:
                continue  # a later run of the task, queued after the stop
            if not run.stop_asked.done():
                run.stop_asked.set_result(message.reason)
                stopped += 1
        return stopped

    def _announce(self, step: RunStep, service: LoadedService) -> None:
        key = (step.deployment, step.service, step.version)
        if self.announce is None or key in self._announced:
            return
        self._announced.add(key)  # a rare second announcement by a racing thread is harmless
        self.announce(step.deployment, step.service, step.version, service)

    def _outcome_of(self, run: Run, result: Any) -> StepFinished:
        """A successful run's outcome, or a failed one if its result is over the bounds: the
        control plane stores results, and the broker carries them."""
        value = jsonable(result)
        try:
            self.result_bounds.check(value)
        except ResultTooLarge as exc:
            return run.outcome(error=error_of(exc, with_traceback=False))
        return run.outcome(result=value)

    def deliver(self, message: DeliverEvent) -> bool:
        """Send an event into a running task; False for a duplicate delivery."""
        in_progress = self._runs.get(message.task_id)
        if in_progress is not None:
            in_progress[0].asking = False
        return self.inbox.deliver(message.task_id, message.seq, message.event)

    def hand_back(self) -> int:
        """Stop the runs that asked for input and got none since, as this worker stops: its
        inbox no longer takes events, so they would wait until their timeout. Their steps go
        back to the queue (see ``run_step``) and run again elsewhere, where the control plane
        sends every event the task was sent. Returns how many runs were stopped. (Durable
        runs still waiting for their journal give up too, and go back to the queue, as do runs
        waiting for the list of stopped runs.)"""
        self.stops.release()
        if self.journals is not None:
            self.journals.give_up()
        stopped = 0
        for run, future in list(self._runs.values()):
            if run.asking:
                run.handed_back = True
                stopped += future.cancel()
        return stopped

    async def _execute(
        self, service: LoadedService, step: RunStep, run: Run, replay: JournalReplay | None
    ) -> Any:
        """Run the workflow under the service's environment, in the session's Context (or,
        durable, from its journal), forwarding streamed events in order and accepting events
        sent in."""
        with environ.scoped(service.env):
            ctx = (
                Context.from_dict(service.workflow, step.context, serializer=JsonSerializer())
                if step.context
                else Context(service.workflow)
            )
            if replay is not None:
                return await self._execute_durably(service, step, run, replay, ctx)
            handler = service.workflow.run(ctx=ctx, **step.input)
            loop = asyncio.get_running_loop()
            self.inbox.attach(step.task_id, handler.ctx or ctx, loop, service.event_types)
            try:
                async for event in handler.stream_events():
                    run.event(event)
                result = await handler
            except asyncio.CancelledError:  # handed back or stopped: end the workflow's run
                with contextlib.suppress(Exception):
                    await handler.cancel_run(timeout=STOP_GRACE)
                raise
            finally:
                self.inbox.detach(step.task_id)
                run.ended.set()
            if step.keep_context and handler.ctx is not None:
                run.context = _context_json(handler.ctx)
            return result

    async def _execute_durably(
        self, service: LoadedService, step: RunStep, run: Run, replay: JournalReplay, ctx: Context
    ) -> Any:
        """:meth:`_execute` of a durable step: from the task's journal (``replay``), sending
        the journal on as it grows, parked once it waits long enough (see
        ``workers.durable``)."""
        workflow = service.workflow
        names = Names(service_package(workflow))
        ctx = restore(workflow, replay, ctx, names) or ctx
        journaling = Journaling(
            step.task_id,
            step.run,
            run.reporter.journal,
            names,
            self.release_after,
            replay.waiters,
            epoch=replay.epoch,
            stop_event=workflow.stop_event_class,
        )
        handler = workflow.run(ctx=ctx, **step.input)
        running_ctx = handler.ctx or ctx
        self.inbox.attach(
            step.task_id,
            running_ctx,
            asyncio.get_running_loop(),
            service.event_types,
            floor=replay.inputs,
            sent_in=journaling.sent_in,
        )
        for seq, text in replay.pending:
            self.inbox.deliver(step.task_id, seq, text)
        journaling.rearm(workflow, handler)

        async def forward() -> None:
            # The stream ends with the StopEvent, which a released run never streams.
            async for event in handler.stream_events(expose_internal=True):
                if not journaling.streamed(event, workflow, handler):
                    run.event(event)

        pump = asyncio.ensure_future(journaling.pump(workflow.runtime, handler))  # type: ignore[arg-type]
        stream = asyncio.ensure_future(forward())
        try:
            result = await handler
            await pump
            if isinstance(result, IdleReleasedEvent):
                stream.cancel()
                run.parked = journaling.released
                run.wake_at = journaling.wake_at
                journaling.flush(
                    running_ctx, snapshot=running_ctx.to_dict(serializer=JsonSerializer())
                )
            else:
                last = journaling.last()
                run.journal = None if last is None else last.encode()
                await stream
        except BaseException as exc:
            pump.cancel()
            stream.cancel()
            if isinstance(exc, asyncio.CancelledError):  # handed back or stopped
                with contextlib.suppress(Exception):
                    await handler.cancel_run(timeout=STOP_GRACE)
            raise
        finally:
            journaling.close()
            self.inbox.detach(step.task_id)
            run.ended.set()
        if step.keep_context:
            run.context = _context_json(running_ctx)
        return result

    def close(self) -> None:
        """Stop the event loop (and any wait for a journal or for the stopped runs)."""
        self.stops.release()
        if self.journals is not None:
            self.journals.give_up()
        self.loop.stop()


def _context_json(ctx: Context) -> dict[str, Any]:
    """The Context as JSON data (never pickle); values that are not JSON are an error."""
    try:
        data = ctx.to_dict(serializer=JsonSerializer())
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise WorkflowStateError(
            f"the session's Context holds a value that cannot be stored as JSON: {exc}"
        ) from exc
    return data
