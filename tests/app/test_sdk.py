"""The Python SDK, sync and async, against a live server: LlamaDeploy's scenarios end to end."""

from __future__ import annotations

import ast
import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

import app.sdk
from app.sdk import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    EventItem,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    SessionBusy,
    TaskEnded,
    TaskFailed,
    TaskResult,
    TaskTimeout,
)
from tests.app.conftest import FAILING
from tests.conftest import EXAMPLES

SDK = Path(app.sdk.__file__).parent
COUNTER = EXAMPLES / "counter" / "deployment.yml"
HITL = EXAMPLES / "hitl" / "deployment.yml"
MULTISTEP = EXAMPLES / "multistep" / "deployment.yml"
QUICKSTART = EXAMPLES / "quickstart" / "deployment.yml"
#: Bound on any one wait; only a failing test waits this long.
DEADLINE = 10.0
FINAL = "hello_world_result_result_result"


def answer() -> HumanResponseEvent:
    """The person's reply to the human-in-the-loop example."""
    return HumanResponseEvent(response="42")  # type: ignore[call-arg]


@pytest.fixture
def sdk(live_server: str) -> Iterator[Client]:
    """A sync client of the live server."""
    with Client(live_server, timeout=DEADLINE) as client:
        yield client


@pytest.fixture
def closed_port_url() -> str:
    """The URL of a local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- public API ---------------------------------------------------------------------------------


def test_all_lists_exactly_the_public_names() -> None:
    """``app.sdk.__all__`` is every public name of the package, each importable and documented;
    the modules behind it are private."""
    public = {name for name in vars(app.sdk) if not name.startswith("_")}
    assert sorted(app.sdk.__all__) == sorted(public)
    assert len(set(app.sdk.__all__)) == len(app.sdk.__all__)
    for name in app.sdk.__all__:
        value = getattr(app.sdk, name)
        if isinstance(value, type):
            assert value.__doc__, f"{name} has no docstring"
    modules = {p.name for p in SDK.glob("*.py")} - {"__init__.py"}
    assert modules and all(m.startswith("_") for m in modules), modules
    assert (SDK / "py.typed").is_file()


def test_the_sdk_imports_only_httpx_workflows_and_itself() -> None:
    """The SDK never imports the server side or the workers: only the standard library,
    httpx, workflows (for JsonSerializer) and ``app.sdk``."""
    allowed = {"httpx", "workflows"}
    for path in SDK.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top in allowed
                ok = ok or name == "app.sdk" or name.startswith("app.sdk.")
                assert ok, f"{path.name} imports {name}"


def test_the_error_tree_is_one_tree() -> None:
    """Every SDK error derives from CeleriacError; the 409s refine Conflict."""
    errors = [v for v in vars(app.sdk).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert all(issubclass(e, app.sdk.CeleriacError) for e in errors)
    assert issubclass(SessionBusy, Conflict) and issubclass(TaskEnded, Conflict)
    assert issubclass(IdempotencyKeyReused, Conflict)
    assert issubclass(app.sdk.RequestTimeout, ConnectionFailed)


# --- sessions: the counter ----------------------------------------------------------------------


def test_session_counter(sdk: Client) -> None:
    """A session keeps the workflow's Context: 1, 2 in one session, then 1 in a new one."""
    sdk.deployments.create(COUNTER)
    first = sdk.sessions.create("Counter")
    assert [sdk.tasks.run("Counter", session_id=first.session_id) for _ in range(2)] == ["1", "2"]
    second = sdk.sessions.create("Counter")
    assert sdk.tasks.run("Counter", session_id=second.session_id) == "1"
    assert len(sdk.sessions.get("Counter", first.session_id).task_ids) == 2
    tasks = sdk.tasks.list("Counter", session_id=first.session_id)
    assert [t.result for t in tasks] == ["1", "2"]


def test_a_task_run_without_a_session_lists_with_none(sdk: Client) -> None:
    """tasks.run without a session: the task is listed, in no session."""
    sdk.deployments.create(COUNTER)
    assert sdk.tasks.run("Counter") == "1"
    [task] = sdk.tasks.list("Counter")
    assert (task.session_id, task.result, task.status) == (None, "1", "succeeded")


def test_session_counter_async(live_server: str) -> None:
    """The same with the async client."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(COUNTER)
            first = await sdk.sessions.create("Counter")
            results = [await sdk.tasks.run("Counter", session_id=first.session_id) for _ in "ab"]
            assert results == ["1", "2"]
            second = await sdk.sessions.create("Counter")
            assert await sdk.tasks.run("Counter", session_id=second.session_id) == "1"
            listed = {s.session_id for s in await sdk.sessions.list("Counter")}
            assert {first.session_id, second.session_id} <= listed

    asyncio.run(scenario())


def test_sessions_create_list_get_delete(sdk: Client) -> None:
    """The sessions namespace over a deployment."""
    sdk.deployments.create(QUICKSTART)
    session = sdk.sessions.create("QuickStart")
    assert session.task_ids == []
    assert session.session_id in {s.session_id for s in sdk.sessions.list("QuickStart")}
    assert sdk.sessions.get("QuickStart", session.session_id) == session
    sdk.sessions.delete("QuickStart", session.session_id)
    with pytest.raises(NotFound):
        sdk.sessions.get("QuickStart", session.session_id)


# --- streaming: the multistep workflow ----------------------------------------------------------


def progress(items: list[EventItem]) -> list[float]:
    """The progress values of a multistep stream."""
    return [i.data["progress"] for i in items if i.type == "ProgressEvent"]


def test_multistep_streams_progress_then_result(sdk: Client) -> None:
    """Progress 0.3, 0.6, 0.9 in order, then the StopEvent; the task's result follows."""
    sdk.deployments.create(MULTISTEP)
    task = sdk.tasks.create("MultiStep", {"message": "hello_world"})
    with sdk.tasks.events("MultiStep", task.task_id, timeout=DEADLINE) as stream:
        items = list(stream)
    assert progress(items) == [0.3, 0.6, 0.9]
    assert [i.seq for i in items] == list(range(len(items)))
    assert items[-1].type == "StopEvent" and items[-1].data == {"result": FINAL}
    assert stream.status == "succeeded" and stream.last_event_id == items[-1].seq
    finished = sdk.tasks.wait("MultiStep", task.task_id, timeout=DEADLINE)
    assert (finished.status, finished.result) == ("succeeded", FINAL)
    assert sdk.tasks.results("MultiStep", task.task_id) == TaskResult(
        task_id=task.task_id, result=FINAL, status="succeeded"
    )


def test_multistep_streams_progress_then_result_async(live_server: str) -> None:
    """The same with the async client."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(MULTISTEP)
            task = await sdk.tasks.create("MultiStep", {"message": "hello_world"})
            items = [i async for i in sdk.tasks.events("MultiStep", task.task_id)]
            assert progress(items) == [0.3, 0.6, 0.9]
            assert items[-1].data == {"result": FINAL}
            finished = await sdk.tasks.wait("MultiStep", task.task_id, timeout=DEADLINE)
            assert (finished.status, finished.result) == ("succeeded", FINAL)

    asyncio.run(scenario())


def test_a_closed_stream_resumes_with_last_event_id(sdk: Client) -> None:
    """Read two events, close, reconnect after the last one read: the rest, no gap, no
    duplicate."""
    sdk.deployments.create(MULTISTEP)
    task = sdk.tasks.create("MultiStep", {"message": "hello_world"})
    stream = sdk.tasks.events("MultiStep", task.task_id, timeout=DEADLINE)
    head = [next(stream), next(stream)]
    stream.close()
    assert stream.last_event_id == 1
    rest = list(sdk.tasks.events("MultiStep", task.task_id, last_event_id=stream.last_event_id))
    everything = list(sdk.tasks.events("MultiStep", task.task_id))
    assert head + rest == everything
    assert [i.seq for i in everything] == list(range(len(everything)))


def test_a_closed_stream_resumes_with_last_event_id_async(live_server: str) -> None:
    """The same with the async client."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(MULTISTEP)
            task = await sdk.tasks.create("MultiStep", {"message": "hello_world"})
            async with sdk.tasks.events("MultiStep", task.task_id) as stream:
                head = [await anext(stream), await anext(stream)]
            after = stream.last_event_id
            rest = [
                i async for i in sdk.tasks.events("MultiStep", task.task_id, last_event_id=after)
            ]
            everything = [i async for i in sdk.tasks.events("MultiStep", task.task_id)]
            assert head + rest == everything
            assert [i.seq for i in everything] == list(range(len(everything)))

    asyncio.run(scenario())


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete server-sent events (with their blank line) and the incomplete rest."""
    *blocks, rest = buffer.split(b"\n\n")
    return [b + b"\n\n" for b in blocks], rest


class DroppingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that breaks, like a dropped connection, after ``keep`` events."""

    def __init__(self, inner: Any, keep: int, dropped: Callable[[], None]) -> None:
        self.inner, self.keep, self.buffer, self.sent = inner, keep, b"", 0
        self.dropped = dropped

    def _pass(self, chunk: bytes) -> list[bytes]:
        blocks, self.buffer = split_events(self.buffer + chunk)
        out = []
        for block in blocks:
            out.append(block)
            self.sent += block.startswith(b"id:")
            if self.sent == self.keep:
                return out
        return out

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield from self._pass(chunk)
            if self.sent == self.keep:
                self.dropped()
                raise httpx.ReadError("connection dropped by the test")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            for block in self._pass(chunk):
                yield block
            if self.sent == self.keep:
                self.dropped()
                raise httpx.ReadError("connection dropped by the test")

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Dropper:
    """Transport wrapper: the first event stream that gets two events breaks after them.

    (A stream may also be left before it got any, by the client itself: on a slow machine
    its read timeout, capped by the caller's deadline, ends first; it then reconnects.)"""

    def __init__(self) -> None:
        self.stream_headers: list[dict[str, str]] = []
        #: The headers of the first stream opened after the drop.
        self.after_drop: dict[str, str] | None = None
        self._dropped = False

    def _drop(self) -> None:
        self._dropped = True

    def wrap(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """Record the stream's request headers; make streams drop until one did."""
        if not request.url.path.endswith("/events") or request.method != "GET":
            return response
        self.stream_headers.append(dict(request.headers))
        if self._dropped:
            if self.after_drop is None:
                self.after_drop = dict(request.headers)
            return response
        stream = DroppingStream(response.stream, keep=2, dropped=self._drop)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)


class SyncDropper(httpx.HTTPTransport, Dropper):
    """The sync transport."""

    def __init__(self) -> None:
        httpx.HTTPTransport.__init__(self)
        Dropper.__init__(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send, then maybe break the answer."""
        return self.wrap(request, super().handle_request(request))


class AsyncDropper(httpx.AsyncHTTPTransport, Dropper):
    """The async transport."""

    def __init__(self) -> None:
        httpx.AsyncHTTPTransport.__init__(self)
        Dropper.__init__(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send, then maybe break the answer."""
        return self.wrap(request, await super().handle_async_request(request))


def test_a_dropped_stream_resumes_by_itself(live_server: str) -> None:
    """When the connection drops, the iterator reconnects with ``Last-Event-ID`` and goes on
    without a gap or a duplicate."""
    transport = SyncDropper()
    with Client(live_server, timeout=DEADLINE, transport=transport) as sdk:
        sdk.deployments.create(MULTISTEP)
        task = sdk.tasks.create("MultiStep", {"message": "hello_world"})
        items = list(sdk.tasks.events("MultiStep", task.task_id, timeout=DEADLINE))
    assert [i.seq for i in items] == [0, 1, 2, 3]
    assert progress(items) == [0.3, 0.6, 0.9]
    assert "last-event-id" not in transport.stream_headers[0]
    assert transport.after_drop is not None
    assert transport.after_drop["last-event-id"] == "1"


def test_a_dropped_stream_resumes_by_itself_async(live_server: str) -> None:
    """The same with the async client."""
    transport = AsyncDropper()

    async def scenario() -> list[EventItem]:
        async with AsyncClient(live_server, timeout=DEADLINE, transport=transport) as sdk:
            await sdk.deployments.create(MULTISTEP)
            task = await sdk.tasks.create("MultiStep", {"message": "hello_world"})
            return [i async for i in sdk.tasks.events("MultiStep", task.task_id)]

    items = asyncio.run(scenario())
    assert [i.seq for i in items] == [0, 1, 2, 3]
    assert "last-event-id" not in transport.stream_headers[0]
    assert transport.after_drop is not None
    assert transport.after_drop["last-event-id"] == "1"


def sse(*blocks: str) -> bytes:
    """A server-sent events body of these blocks."""
    return "".join(f"{b}\n\n" for b in blocks).encode()


def event_block(seq: int) -> str:
    """One event as the server writes it."""
    payload = json.dumps({"type": "Tick", "qualified_name": "x.Tick", "data": {"n": seq}})
    return f"id: {seq}\nevent: Tick\ndata: {payload}"


def test_a_stream_ended_early_resumes_where_it_stopped() -> None:
    """A stream that closes before its ``end`` is reopened after the last event seen."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:
            body = sse("retry: 10", event_block(0), event_block(1))
        else:
            body = sse("retry: 10", event_block(2), 'event: end\ndata: {"status": "succeeded"}')
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with Client("http://celeriac.test", transport=httpx.MockTransport(handler)) as sdk:
        stream = sdk.tasks.events("D", "t")
        assert [i.data["n"] for i in stream] == [0, 1, 2]
    assert seen == [None, "1"]
    assert stream.status == "succeeded"


def test_a_stream_that_keeps_closing_gives_up() -> None:
    """Connections that bring nothing, again and again, end in ConnectionFailed."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=sse("retry: 10"))

    async def scenario() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://celeriac.test", transport=transport) as sdk:
            with pytest.raises(ConnectionFailed, match="keeps closing"):
                [i async for i in sdk.tasks.events("D", "t")]

    asyncio.run(scenario())
    assert len(calls) == 6


def test_a_malformed_event_is_an_error() -> None:
    """An event whose data is not the API's JSON is reported, not passed on half-read."""
    body = sse("id: 0\nevent: Tick\ndata: {not json")
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=body))
    with (
        Client("http://celeriac.test", transport=transport) as sdk,
        pytest.raises(ConnectionFailed, match="malformed"),
    ):
        list(sdk.tasks.events("D", "t"))


def test_the_stream_of_an_unreachable_server_fails_at_once(closed_port_url: str) -> None:
    """No retries when the server was never reached."""
    started = time.monotonic()
    with Client(closed_port_url, timeout=2) as sdk, pytest.raises(ConnectionFailed):
        list(sdk.tasks.events("D", "t"))
    assert time.monotonic() - started < 1.5


# --- human in the loop --------------------------------------------------------------------------


def test_human_in_the_loop(sdk: Client) -> None:
    """Create the task, read its events until the question, answer 42: the result is 42, and
    the task was waiting for input before the answer."""
    sdk.deployments.create(HITL)
    task = sdk.tasks.create("HumanInTheLoop")
    with sdk.tasks.events("HumanInTheLoop", task.task_id, timeout=DEADLINE) as stream:
        question = next(i for i in stream if i.type == "InputRequiredEvent")
        assert question.data["prefix"] == "What is the answer?"
        assert sdk.tasks.get("HumanInTheLoop", task.task_id).status == "waiting_input"
        sent = sdk.tasks.send_event("HumanInTheLoop", task.task_id, answer(), service="ask")
        assert sent.service_id == "ask"
        assert [i.data for i in stream] == [{"result": "42"}]
    finished = sdk.tasks.wait("HumanInTheLoop", task.task_id, timeout=DEADLINE)
    assert (finished.status, finished.result) == ("succeeded", "42")


def test_human_in_the_loop_async(live_server: str) -> None:
    """The same with the async client, sending the event already serialized."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(HITL)
            task = await sdk.tasks.create("HumanInTheLoop")
            async with sdk.tasks.events("HumanInTheLoop", task.task_id) as stream:
                async for item in stream:
                    if item.type == "InputRequiredEvent":
                        break
            waiting = await sdk.tasks.get("HumanInTheLoop", task.task_id)
            assert waiting.status == "waiting_input"
            serialized = JsonSerializer().serialize(answer())
            await sdk.tasks.send_event("HumanInTheLoop", task.task_id, serialized)
            finished = await sdk.tasks.wait("HumanInTheLoop", task.task_id, timeout=DEADLINE)
            assert (finished.status, finished.result) == ("succeeded", "42")

    asyncio.run(scenario())


def test_reject_on_a_busy_session_raises_session_busy(sdk: Client) -> None:
    """``multitask_strategy="reject"`` while the session runs a task is a 409 SessionBusy."""
    sdk.deployments.create(HITL)
    busy = sdk.tasks.create("HumanInTheLoop")
    with pytest.raises(SessionBusy) as caught:
        sdk.tasks.create("HumanInTheLoop", session_id=busy.session_id, multitask_strategy="reject")
    assert caught.value.status_code == 409
    assert caught.value.errors["active_task_id"] == busy.task_id
    with pytest.raises(SessionBusy):
        sdk.tasks.run("HumanInTheLoop", session_id=busy.session_id, multitask_strategy="reject")
    sdk.tasks.send_event("HumanInTheLoop", busy.task_id, answer())
    assert sdk.tasks.wait("HumanInTheLoop", busy.task_id, timeout=DEADLINE).result == "42"


def test_reject_on_a_busy_session_raises_session_busy_async(live_server: str) -> None:
    """The same with the async client."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(HITL)
            busy = await sdk.tasks.create("HumanInTheLoop")
            with pytest.raises(SessionBusy):
                await sdk.tasks.create(
                    "HumanInTheLoop", session_id=busy.session_id, multitask_strategy="reject"
                )
            await sdk.tasks.send_event("HumanInTheLoop", busy.task_id, answer())
            assert (await sdk.tasks.wait("HumanInTheLoop", busy.task_id)).result == "42"

    asyncio.run(scenario())


# --- idempotency keys ---------------------------------------------------------------------------


def test_an_idempotency_key_makes_a_task_sent_twice_one_task(sdk: Client) -> None:
    """``idempotency_key=``: the same create or run again is the first task; another
    request under the key raises IdempotencyKeyReused and stores nothing."""
    sdk.deployments.create(QUICKSTART)
    first = sdk.tasks.create("QuickStart", {"message": "hi"}, idempotency_key="create-1")
    again = sdk.tasks.create("QuickStart", {"message": "hi"}, idempotency_key="create-1")
    assert again.task_id == first.task_id
    with pytest.raises(IdempotencyKeyReused) as reused:
        sdk.tasks.create("QuickStart", {"message": "bye"}, idempotency_key="create-1")
    assert reused.value.status_code == 409
    assert list(reused.value.errors) == ["Idempotency-Key"]
    ran = [sdk.tasks.run("QuickStart", {"message": "r"}, idempotency_key="run-1") for _ in "ab"]
    assert ran == ["Message received: r"] * 2
    with pytest.raises(IdempotencyKeyReused):
        sdk.tasks.run("QuickStart", {"message": "hi"}, idempotency_key="create-1")
    assert len(sdk.tasks.list("QuickStart")) == 2


def test_an_idempotency_key_makes_a_task_sent_twice_one_task_async(live_server: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(QUICKSTART)
            tasks = [
                await sdk.tasks.create("QuickStart", {"message": "hi"}, idempotency_key="c")
                for _ in "ab"
            ]
            assert tasks[0].task_id == tasks[1].task_id
            ran = [
                await sdk.tasks.run("QuickStart", {"message": "r"}, idempotency_key="r")
                for _ in "ab"
            ]
            assert ran == ["Message received: r"] * 2
            with pytest.raises(IdempotencyKeyReused):
                await sdk.tasks.run("QuickStart", {"message": "other"}, idempotency_key="r")
            assert len(await sdk.tasks.list("QuickStart")) == 2

    asyncio.run(scenario())


# --- errors and timeouts ------------------------------------------------------------------------


def test_errors_map_to_exception_classes(sdk: Client) -> None:
    """404, 409, 422 and 502 raise NotFound, Conflict, InvalidInput and TaskFailed."""
    with pytest.raises(NotFound, match="Nowhere"):
        sdk.tasks.run("Nowhere", {"message": "hi"})
    sdk.deployments.create(FAILING)
    with pytest.raises(NotFound):
        sdk.tasks.get("Failing", "no-such-task")
    with pytest.raises(Conflict) as taken:
        sdk.deployments.create(FAILING)
    assert type(taken.value) is Conflict and "reload" in str(taken.value)
    with pytest.raises(InvalidInput) as invalid:
        sdk.tasks.list("Failing", limit=0)
    assert invalid.value.status_code == 422 and invalid.value.errors
    with pytest.raises(TaskFailed, match="boom") as failed:
        sdk.tasks.run("Failing")
    assert failed.value.status_code == 502
    task = sdk.tasks.create("Failing")
    with pytest.raises(InvalidInput, match="event_obj_str"):
        sdk.tasks.send_event("Failing", task.task_id, "not JSON")
    ended = sdk.tasks.wait("Failing", task.task_id, timeout=DEADLINE)
    assert ended.status == "failed" and "boom" in str(ended.error)
    [run] = sdk.tasks.attempts("Failing", task.task_id)
    assert (run.attempt, run.outcome, run.error) == (1, "failed", ended.error)
    assert ended.attempt_history == [run]
    with pytest.raises(NotFound):
        sdk.tasks.attempts("Failing", "no-such-task")
    with pytest.raises(TaskEnded):
        sdk.tasks.send_event("Failing", task.task_id, answer())


def test_errors_map_to_exception_classes_async(live_server: str) -> None:
    """The same classes from the async client."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            with pytest.raises(NotFound):
                await sdk.deployments.get("Nowhere")
            await sdk.deployments.create(FAILING)
            with pytest.raises(InvalidInput):
                await sdk.tasks.list("Failing", limit=0)
            with pytest.raises(TaskFailed, match="boom"):
                await sdk.tasks.run("Failing")
            with pytest.raises(NotFound):
                [i async for i in sdk.tasks.events("Failing", "no-such-task")]

    asyncio.run(scenario())


def test_unreachable_server(closed_port_url: str) -> None:
    """A closed port is ConnectionFailed for calls and streams; ``status`` says Down."""
    with Client(closed_port_url, timeout=2) as sdk:
        assert sdk.status().status == "Down"
        with pytest.raises(ConnectionFailed, match="cannot reach"):
            sdk.deployments.list()

    async def scenario() -> None:
        async with AsyncClient(closed_port_url, timeout=2) as sdk:
            assert (await sdk.status()).status == "Down"
            with pytest.raises(ConnectionFailed):
                await sdk.sessions.list("QuickStart")

    asyncio.run(scenario())


def test_timeouts_are_task_timeout(sdk: Client) -> None:
    """``run`` past its timeout is the server's 504; ``wait`` and ``events`` past theirs end
    on time; all raise TaskTimeout and the task keeps running."""
    sdk.deployments.create(HITL)
    with pytest.raises(TaskTimeout) as server_side:
        sdk.tasks.run("HumanInTheLoop", timeout=0.2)
    assert server_side.value.status_code == 504
    task = sdk.tasks.create("HumanInTheLoop")
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="keeps running"):
        sdk.tasks.wait("HumanInTheLoop", task.task_id, timeout=0.5)
    with pytest.raises(TaskTimeout):
        list(sdk.tasks.events("HumanInTheLoop", task.task_id, timeout=0.5))
    assert time.monotonic() - started < 3
    assert not sdk.tasks.get("HumanInTheLoop", task.task_id).done
    for pending in sdk.tasks.list("HumanInTheLoop"):
        sdk.tasks.send_event("HumanInTheLoop", pending.task_id, answer())
        assert sdk.tasks.wait("HumanInTheLoop", pending.task_id).result == "42"


def test_wait_timeout_async(live_server: str) -> None:
    """The async ``wait`` ends on time too."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            await sdk.deployments.create(HITL)
            task = await sdk.tasks.create("HumanInTheLoop")
            started = time.monotonic()
            with pytest.raises(TaskTimeout):
                await sdk.tasks.wait("HumanInTheLoop", task.task_id, timeout=0.5)
            assert time.monotonic() - started < 3
            await sdk.tasks.send_event("HumanInTheLoop", task.task_id, answer())
            assert (await sdk.tasks.wait("HumanInTheLoop", task.task_id)).result == "42"

    asyncio.run(scenario())


# --- deployments --------------------------------------------------------------------------------


def test_deployments_create_list_get_services_delete(sdk: Client) -> None:
    """The deployments namespace, typed."""
    created = sdk.deployments.create(QUICKSTART)
    assert created.name == "QuickStart" and created.default_service == "echo_workflow"
    assert [d.name for d in sdk.deployments.list()] == ["QuickStart"]
    assert sdk.deployments.get("QuickStart") == created
    (service,) = sdk.deployments.services("QuickStart")
    assert (service.name, service.queue) == ("echo_workflow", created.services[0].queue)
    assert sdk.deployments.create(QUICKSTART, reload=True).version == 2
    sdk.deployments.delete("QuickStart")
    with pytest.raises(NotFound):
        sdk.deployments.get("QuickStart")


def test_deployments_async(live_server: str) -> None:
    """The same with the async client, with a task's typed fields."""

    async def scenario() -> None:
        async with AsyncClient(live_server, timeout=DEADLINE) as sdk:
            with QUICKSTART.open("rb") as fh:
                created = await sdk.deployments.create(fh, base_path=QUICKSTART.parent)
            assert [d.name for d in await sdk.deployments.list()] == [created.name]
            assert [s.name for s in await sdk.deployments.services("QuickStart")] == [
                "echo_workflow"
            ]
            task = await sdk.tasks.create("QuickStart", {"message": "hi"}, task_id="my-task-1")
            done = await sdk.tasks.wait("QuickStart", task.task_id)
            assert done.attempts == 1 and done.finished_at is not None
            [run] = done.attempt_history
            assert (run.attempt, run.outcome, run.error) == (1, "succeeded", None)
            assert run.started_at is not None and run.finished_at == done.finished_at
            assert await sdk.tasks.attempts("QuickStart", "my-task-1") == [run]
            assert (done.task_id, done.input, done.result) == (
                "my-task-1",
                {"message": "hi"},
                "Message received: hi",
            )
            assert (await sdk.tasks.results("QuickStart", "my-task-1")) is not None
            await sdk.deployments.delete("QuickStart")
            assert await sdk.deployments.list() == []

    asyncio.run(scenario())
