"""The asynchronous client: :class:`AsyncClient`, the same API as :class:`Client` to await."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import httpx

from app.sdk import _calls as calls
from app.sdk._calls import DEFAULT_SERVER, DEFAULT_TIMEOUT, Call, MultitaskStrategy
from app.sdk._errors import APIError, ConnectionFailed
from app.sdk._models import (
    Attempt,
    Deployment,
    EventDefinition,
    EventItem,
    LiveService,
    Session,
    Status,
    Step,
    Task,
    TaskResult,
)
from app.sdk._stream import Follower

if TYPE_CHECKING:
    from workflows.events import Event

T = TypeVar("T")


class AsyncClient:
    """Talks to one Celeriac API server; use as an async context manager or await
    :meth:`aclose`.

    ``timeout`` is the HTTP timeout in seconds (None: none) and the default wait of
    ``tasks.run`` and ``tasks.wait``. ``token`` is the API token to send (None: the
    ``CELERIAC_TOKEN`` variable's, if set; ``""``: none).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.server,
            timeout=timeout,
            transport=transport,
            headers=calls.auth_headers(token),
        )
        self.deployments = AsyncDeployments(self)
        self.tasks = AsyncTasks(self)
        self.sessions = AsyncSessions(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def status(self) -> Status:
        """The server's health: ``Healthy``, ``Unhealthy`` if it answers with an error, or
        ``Down`` if it cannot be reached."""
        try:
            return await self._send(calls.status())
        except ConnectionFailed as exc:
            return Status("Down", str(exc), None, [])
        except APIError as exc:
            return Status("Unhealthy", str(exc), None, [])

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send any request (``kwargs`` go to httpx) and return the decoded JSON, raising the
        SDK's errors."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise calls.transport_error(self.server, exc) from exc
        return calls.outcome(Call(method, path, calls.identity), response)

    async def _send(self, call: Call[T]) -> T:
        """Send one described call and decode its answer."""
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                files=call.files,
                headers=call.headers or None,
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise calls.transport_error(self.server, exc) from exc
        return calls.outcome(call, response)

    async def _follow(self, follower: Follower) -> AsyncGenerator[EventItem, None]:
        """The events of a stream as they arrive, reconnecting after drops, to its end."""
        while not follower.ended:
            connection = follower.connect(time.monotonic())
            left = False  # on purpose: the stream ended, or the connection is to be renewed
            try:
                async with self._http.stream(
                    "GET", connection.path, headers=connection.headers, timeout=connection.timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    follower.opened(response)
                    async for line in response.aiter_lines():
                        item = follower.feed(line, time.monotonic())
                        if item is not None:
                            yield item
                        if follower.ended or follower.stale(time.monotonic()):
                            left = True
                            break
            except httpx.TransportError as exc:
                await asyncio.sleep(follower.dropped(exc, time.monotonic()))
                continue
            if not left:
                await asyncio.sleep(follower.dropped(None, time.monotonic()))


class AsyncEventStream(AsyncIterator[EventItem]):
    """A live async iterator over a task's events; ends after the task's last event.

    ``last_event_id`` is where to resume (``tasks.events(..., last_event_id=...)``) and
    ``status`` the task's final status once the stream ended. Close it with :meth:`aclose`
    (or use it as an async context manager) to leave early.
    """

    def __init__(self, items: AsyncGenerator[EventItem, None], follower: Follower) -> None:
        self._items = items
        self._follower = follower

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> EventItem:
        return await anext(self._items)

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def last_event_id(self) -> int | None:
        """The sequence number of the last event read, None before the first."""
        return self._follower.last_event_id

    @property
    def status(self) -> str | None:
        """The task's final status once the stream ended, else None."""
        return self._follower.status

    async def aclose(self) -> None:
        """Drop the connection."""
        await self._items.aclose()


class AsyncDeployments:
    """``client.deployments``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        config: str | Path | IO[bytes],
        *,
        base_path: str | Path | None = None,
        reload: bool = False,
    ) -> Deployment:
        """Deploy a YAML file (a path or an open binary file); local sources are relative to
        ``base_path``, by default the file's folder."""
        return await self._c._send(calls.create_deployment(config, base_path, reload))

    async def services(self, name: str) -> list[LiveService]:
        """A deployment's services with the workers serving them now."""
        return await self._c._send(calls.deployment_services(name))

    async def list(self) -> list[Deployment]:
        """Every deployment."""
        return await self._c._send(calls.list_deployments())

    async def get(self, name: str) -> Deployment:
        """One deployment."""
        return await self._c._send(calls.get_deployment(name))

    async def delete(self, name: str) -> None:
        """Delete a deployment with its sessions, tasks and events."""
        await self._c._send(calls.delete_deployment(name))


class AsyncTasks:
    """``client.tasks``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def run(
        self,
        deployment: str,
        input: dict[str, Any] | None = None,
        *,
        service: str | None = None,
        session_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        time_limit: float | None = None,
        queue_timeout: float | None = None,
    ) -> Any:
        """Run a task and return its result; :class:`TaskFailed` if the workflow fails,
        :class:`TaskTimeout` after ``timeout`` seconds (default: the client's timeout).
        With ``idempotency_key``, running the same task again under the key (after a lost
        answer, say) returns the first run's result instead of running it again. ``time_limit``
        and ``queue_timeout`` (seconds) replace the service's for this task."""
        return await self._c._send(
            calls.run_task(
                deployment,
                input,
                service=service,
                session_id=session_id,
                multitask_strategy=multitask_strategy,
                timeout=timeout,
                client_timeout=self._c.timeout,
                idempotency_key=idempotency_key,
                limits=calls.TimeLimits(time_limit, queue_timeout),
            )
        )

    async def create(
        self,
        deployment: str,
        input: dict[str, Any] | None = None,
        *,
        service: str | None = None,
        session_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        time_limit: float | None = None,
        queue_timeout: float | None = None,
        standalone: bool = False,
    ) -> Task:
        """Queue a task and return it without waiting (:class:`SessionBusy` if the session
        is busy and ``multitask_strategy="reject"``). With ``idempotency_key``, queueing
        the same task again under the key returns the first one instead of another
        (:class:`IdempotencyKeyReused` for a different task under the key). ``time_limit``
        and ``queue_timeout`` (seconds) replace the service's for this task. Without a
        ``session_id`` the task opens a new session, unless ``standalone``: then it has
        none."""
        return await self._c._send(
            calls.create_task(
                deployment,
                input,
                service=service,
                session_id=session_id,
                multitask_strategy=multitask_strategy,
                task_id=task_id,
                idempotency_key=idempotency_key,
                limits=calls.TimeLimits(time_limit, queue_timeout),
                standalone=standalone,
            )
        )

    async def get(self, deployment: str, task_id: str) -> Task:
        """A task's status and outcome."""
        return await self._c._send(calls.get_task(deployment, task_id))

    async def retry(self, deployment: str, task_id: str) -> Task:
        """Queue a task that failed, timed out or was cancelled again, as a new run with the
        same id; the task as queued. :class:`Conflict` for a task in any other status."""
        return await self._c._send(calls.retry_task(deployment, task_id))

    async def cancel(self, deployment: str, task_id: str) -> Task:
        """Cancel a task that has not ended: a queued one never starts, a running one is
        stopped; the task as cancelled. :class:`Conflict` for a task that has ended."""
        return await self._c._send(calls.cancel_task(deployment, task_id))

    async def attempts(self, deployment: str, task_id: str) -> list[Attempt]:
        """Each run of a task, first first: worker, start, end, outcome and error."""
        return await self._c._send(calls.task_attempts(deployment, task_id))

    async def steps(self, deployment: str, task_id: str) -> list[Step]:
        """The steps of a durable task's workflow that ended, in the order they ended: event
        taken, attempt, run, times and outcome. Empty for a task of a service that is not
        durable (``celeriac: {durable: true}``): its steps are not journaled."""
        return await self._c._send(calls.task_steps(deployment, task_id))

    async def list(
        self,
        deployment: str,
        *,
        session_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Task]:
        """A deployment's tasks, oldest first."""
        return await self._c._send(
            calls.list_tasks(deployment, session_id=session_id, limit=limit, offset=offset)
        )

    async def results(self, deployment: str, task_id: str) -> TaskResult | None:
        """LlamaDeploy's ``TaskResult`` once the task ended, else None."""
        return await self._c._send(calls.task_results(deployment, task_id))

    def events(
        self,
        deployment: str,
        task_id: str,
        *,
        last_event_id: int | None = None,
        timeout: float | None = None,
    ) -> AsyncEventStream:
        """Follow a task's events live, from the first (or after ``last_event_id``) to its
        end, resuming by itself after a dropped connection; :class:`TaskTimeout` if the task
        has not ended after ``timeout`` seconds (default: no limit)."""
        follower = Follower(
            self._c.server,
            deployment,
            task_id,
            last_event_id=last_event_id,
            timeout=timeout,
            client_timeout=self._c.timeout,
            now=time.monotonic(),
        )
        return AsyncEventStream(self._c._follow(follower), follower)

    async def send_event(
        self,
        deployment: str,
        task_id: str,
        event: Event | str,
        service: str | None = None,
    ) -> EventDefinition:
        """Send an event (a workflow ``Event`` or its JsonSerializer form) into a running
        task; :class:`TaskEnded` if the task has ended."""
        return await self._c._send(calls.send_event(deployment, task_id, event, service))

    async def wait(self, deployment: str, task_id: str, timeout: float | None = None) -> Task:
        """Follow a task to its end and return it; :class:`TaskTimeout` after ``timeout``
        seconds (default: the client's timeout)."""
        task = await self.get(deployment, task_id)
        if task.done:
            return task
        limit = timeout if timeout is not None else self._c.timeout
        async with self.events(deployment, task_id, timeout=limit) as stream:
            async for _ in stream:
                pass
        return await self.get(deployment, task_id)


class AsyncSessions:
    """``client.sessions``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, deployment: str) -> Session:
        """A new session."""
        return await self._c._send(calls.create_session(deployment))

    async def list(self, deployment: str) -> list[Session]:
        """The live sessions of a deployment."""
        return await self._c._send(calls.list_sessions(deployment))

    async def get(self, deployment: str, session_id: str) -> Session:
        """One session."""
        return await self._c._send(calls.get_session(deployment, session_id))

    async def delete(self, deployment: str, session_id: str) -> None:
        """Delete a session (its tasks stay readable)."""
        await self._c._send(calls.delete_session(deployment, session_id))
