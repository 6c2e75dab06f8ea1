"""Every API call as data, shared by the sync and async clients: what to send, how to decode.

A :class:`Call` names the method, path, query, body and timeout of one request and the
function that turns the JSON answer into the SDK's types. The clients only send it
(:func:`outcome` then decodes the answer or raises); nothing here does I/O on the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from app.sdk._errors import Conflict, ConnectionFailed, RequestTimeout, TaskEnded, error_for
from app.sdk._models import (
    Attempt,
    Deployment,
    EventDefinition,
    LiveService,
    Session,
    Status,
    Step,
    Task,
    TaskResult,
)

if TYPE_CHECKING:
    from workflows.events import Event

T = TypeVar("T")

MultitaskStrategy = Literal["enqueue", "reject"]

DEFAULT_SERVER = "http://127.0.0.1:4501"
#: Seconds of the HTTP timeout (connect, read, write, pool) unless the client says otherwise.
DEFAULT_TIMEOUT = 120.0
#: Extra seconds a blocking ``tasks/run`` read waits beyond the server-side wait.
RUN_MARGIN = 5.0


#: Where a client finds its API token when it is given none.
TOKEN_VARIABLE = "CELERIAC_TOKEN"
#: The header that makes sending a task twice safe (``idempotency_key=``).
IDEMPOTENCY_KEY = "Idempotency-Key"


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers that carry an API token: ``token``, else ``$CELERIAC_TOKEN`` when
    ``token`` is None; none for an empty one."""
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE, "")
    token = token.strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API and the decoder of its answer."""

    method: str
    path: str
    decode: Callable[[Any], T]
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    #: Headers of this request besides the client's own.
    headers: dict[str, str] = field(default_factory=dict)
    #: None: the client's timeout.
    timeout: httpx.Timeout | None = None
    #: What a 409 of this call means.
    conflict: type[Conflict] = Conflict


def outcome(call: Call[T], response: httpx.Response) -> T:
    """Decode a read response of ``call``, or raise the SDK error it stands for."""
    if response.status_code >= 400:
        raise error_for(response.status_code, _body(response), call.conflict)
    if response.status_code == 204 or not response.content:
        return call.decode(None)
    return call.decode(response.json())


def transport_error(server: str, exc: httpx.TransportError) -> ConnectionFailed:
    """The SDK error for a network failure."""
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"{server} did not answer in time ({type(exc).__name__})")
    return ConnectionFailed(f"cannot reach {server}: {exc or type(exc).__name__}")


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"message": response.text.strip()[:500] or response.reason_phrase}


def segment(value: str) -> str:
    """A name or id as one path segment."""
    return quote(value, safe="")


def _nothing(_data: Any) -> None:
    return None


def identity(data: Any) -> Any:
    """The JSON answer as it is."""
    return data


# --- server and deployments ---------------------------------------------------------------------


def status() -> Call[Status]:
    """``GET /status/``."""
    return Call("GET", "/status/", Status.from_json)


def create_deployment(
    config: str | Path | IO[bytes], base_path: str | Path | None, reload: bool
) -> Call[Deployment]:
    """``POST /deployments/create`` of a YAML file given as a path or an open binary file;
    local sources are relative to ``base_path``, by default the file's folder."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        content = path.read_bytes()
        base = base_path if base_path is not None else path.resolve().parent
    else:
        content = config.read()
        base = base_path if base_path is not None else Path.cwd()
    return Call(
        "POST",
        "/deployments/create",
        Deployment.from_json,
        params={"base_path": str(base), "reload": str(reload).lower()},
        files={"config_file": ("deployment.yml", content, "application/x-yaml")},
    )


def list_deployments() -> Call[list[Deployment]]:
    """``GET /deployments/``."""
    return Call("GET", "/deployments/", lambda data: [Deployment.from_json(d) for d in data])


def get_deployment(name: str) -> Call[Deployment]:
    """``GET /deployments/{name}``."""
    return Call("GET", f"/deployments/{segment(name)}", Deployment.from_json)


def delete_deployment(name: str) -> Call[None]:
    """``DELETE /deployments/{name}``."""
    return Call("DELETE", f"/deployments/{segment(name)}", _nothing)


def deployment_services(name: str) -> Call[list[LiveService]]:
    """``GET /deployments/{name}/services``."""
    return Call(
        "GET",
        f"/deployments/{segment(name)}/services",
        lambda data: [LiveService.from_json(s) for s in data],
    )


# --- tasks --------------------------------------------------------------------------------------


def tasks_path(deployment: str, *rest: str) -> str:
    """The path of a deployment's tasks, or of something under them."""
    return "/".join([f"/deployments/{segment(deployment)}/tasks", *(segment(r) for r in rest)])


def run_task(
    deployment: str,
    input: dict[str, Any] | None,
    *,
    service: str | None,
    session_id: str | None,
    multitask_strategy: MultitaskStrategy | None,
    timeout: float | None,
    client_timeout: float | None,
    idempotency_key: str | None = None,
    limits: TimeLimits | None = None,
) -> Call[Any]:
    """``POST tasks/run``: the server waits ``timeout`` s (default: the client's timeout)
    and the HTTP read waits a little longer, so that a slow task ends in a 504, not a drop."""
    params = _submit_params(session_id, multitask_strategy)
    wait = timeout if timeout is not None else client_timeout
    http_timeout = httpx.Timeout(None)
    if wait is not None:
        params["timeout"] = str(wait)
        connect = client_timeout if client_timeout is not None else wait
        http_timeout = httpx.Timeout(connect, read=wait + RUN_MARGIN)
    return Call(
        "POST",
        tasks_path(deployment, "run"),
        identity,
        params=params,
        json=_definition(input, service, None, limits),
        headers=_key_header(idempotency_key),
        timeout=http_timeout,
    )


def create_task(
    deployment: str,
    input: dict[str, Any] | None,
    *,
    service: str | None,
    session_id: str | None,
    multitask_strategy: MultitaskStrategy | None,
    task_id: str | None,
    idempotency_key: str | None = None,
    limits: TimeLimits | None = None,
    standalone: bool = False,
) -> Call[Task]:
    """``POST tasks/create`` (``standalone``: in no session, if none is named)."""
    params = _submit_params(session_id, multitask_strategy)
    if standalone:
        params["standalone"] = "true"
    return Call(
        "POST",
        tasks_path(deployment, "create"),
        Task.from_json,
        params=params,
        json=_definition(input, service, task_id, limits),
        headers=_key_header(idempotency_key),
    )


def get_task(deployment: str, task_id: str) -> Call[Task]:
    """``GET tasks/{id}``."""
    return Call("GET", tasks_path(deployment, task_id), Task.from_json)


def retry_task(deployment: str, task_id: str) -> Call[Task]:
    """``POST tasks/{id}/retry``."""
    return Call("POST", tasks_path(deployment, task_id, "retry"), Task.from_json)


def cancel_task(deployment: str, task_id: str) -> Call[Task]:
    """``POST tasks/{id}/cancel``."""
    return Call("POST", tasks_path(deployment, task_id, "cancel"), Task.from_json)


def task_attempts(deployment: str, task_id: str) -> Call[list[Attempt]]:
    """``GET tasks/{id}/attempts``, first first."""
    return Call(
        "GET",
        tasks_path(deployment, task_id, "attempts"),
        lambda data: [Attempt.from_json(a) for a in data],
    )


def task_steps(deployment: str, task_id: str) -> Call[list[Step]]:
    """``GET tasks/{id}/steps``: a durable task's steps that ended, in the order they ended."""
    return Call(
        "GET",
        tasks_path(deployment, task_id, "steps"),
        lambda data: [Step.from_json(s) for s in data],
    )


def list_tasks(
    deployment: str, *, session_id: str | None, limit: int, offset: int
) -> Call[list[Task]]:
    """``GET tasks``, oldest first."""
    params = {"limit": str(limit), "offset": str(offset)}
    if session_id:
        params["session_id"] = session_id
    return Call(
        "GET",
        tasks_path(deployment),
        lambda data: [Task.from_json(t) for t in data],
        params=params,
    )


def task_results(deployment: str, task_id: str) -> Call[TaskResult | None]:
    """``GET tasks/{id}/results``: None while the task runs."""
    return Call(
        "GET",
        tasks_path(deployment, task_id, "results"),
        lambda data: TaskResult.from_json(data) if data else None,
    )


def send_event(
    deployment: str, task_id: str, event: Event | str, service: str | None
) -> Call[EventDefinition]:
    """``POST tasks/{id}/events``: ``event`` is a workflow event or its serialized form."""
    return Call(
        "POST",
        tasks_path(deployment, task_id, "events"),
        EventDefinition.from_json,
        json={"service_id": service, "event_obj_str": serialize_event(event)},
        conflict=TaskEnded,
    )


def serialize_event(event: Event | str) -> str:
    """LlamaDeploy's ``event_obj_str``: llama-index's JsonSerializer form of the event."""
    if isinstance(event, str):
        return event
    # Imported here, not at the top: workflows takes about 0.3 s to import and only this
    # path needs it, so that ``celeriac`` client commands stay quick to start.
    from workflows.context.serializers import JsonSerializer

    return JsonSerializer().serialize(event)


def _submit_params(
    session_id: str | None, multitask_strategy: MultitaskStrategy | None
) -> dict[str, str]:
    params: dict[str, str] = {}
    if session_id:
        params["session_id"] = session_id
    if multitask_strategy:
        params["multitask_strategy"] = multitask_strategy
    return params


def _key_header(idempotency_key: str | None) -> dict[str, str]:
    """The ``Idempotency-Key`` header, if there is a key."""
    return {} if idempotency_key is None else {IDEMPOTENCY_KEY: idempotency_key}


def _definition(
    input: dict[str, Any] | None,
    service: str | None,
    task_id: str | None,
    limits: TimeLimits | None = None,
) -> dict[str, Any]:
    """LlamaDeploy's ``TaskDefinition`` body, with Celeriac's time controls if set."""
    body: dict[str, Any] = {"input": json.dumps(input or {})}
    if service:
        body["service_id"] = service
    if task_id:
        body["task_id"] = task_id
    if limits is not None:
        body.update(limits.body())
    return body


@dataclass(frozen=True)
class TimeLimits:
    """A task's own time controls (each replaces its service's for this task)."""

    #: Seconds the task's run may take; then it is stopped and ends ``timed_out``.
    time_limit: float | None = None
    #: Seconds it may wait in the queue; then it ends ``timed_out`` without starting.
    queue_timeout: float | None = None

    def body(self) -> dict[str, float]:
        """The fields of a ``TaskDefinition`` that carry them."""
        fields = {"time_limit": self.time_limit, "queue_timeout": self.queue_timeout}
        return {name: value for name, value in fields.items() if value is not None}


# --- sessions -----------------------------------------------------------------------------------


def _sessions_path(deployment: str, *rest: str) -> str:
    return "/".join([f"/deployments/{segment(deployment)}/sessions", *(segment(r) for r in rest)])


def create_session(deployment: str) -> Call[Session]:
    """``POST sessions/create``."""
    return Call("POST", _sessions_path(deployment, "create"), Session.from_json)


def list_sessions(deployment: str) -> Call[list[Session]]:
    """``GET sessions``."""
    return Call(
        "GET", _sessions_path(deployment), lambda data: [Session.from_json(s) for s in data]
    )


def get_session(deployment: str, session_id: str) -> Call[Session]:
    """``GET sessions/{id}``."""
    return Call("GET", _sessions_path(deployment, session_id), Session.from_json)


def delete_session(deployment: str, session_id: str) -> Call[None]:
    """``POST sessions/delete?session_id=`` (LlamaDeploy's form)."""
    return Call(
        "POST",
        _sessions_path(deployment, "delete"),
        _nothing,
        params={"session_id": session_id},
    )
