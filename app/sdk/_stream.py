"""Following a task's event stream over server-sent events, without doing the I/O.

:class:`Follower` is the state both clients share: it builds each (re)connection's request
(with ``Last-Event-ID`` once an event was seen), parses the lines that arrive into
:class:`EventItem` values, notices the final ``end`` event, decides whether and when to
reconnect after a dropped connection, and enforces the caller's overall timeout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import httpx

from app.sdk._calls import Call, outcome, tasks_path, transport_error
from app.sdk._errors import ConnectionFailed, TaskTimeout
from app.sdk._models import EventItem

SSE = "text/event-stream"
#: The server sends a keep-alive every 15 s; this long without a line means a dead connection.
QUIET_LIMIT = 45.0
#: Connections in a row that bring neither an event nor a keep-alive before the stream gives up.
MAX_FAILURES = 5
#: The most seconds to wait before reconnecting, whatever the server's ``retry`` says.
MAX_DELAY = 5.0


@dataclass(frozen=True)
class StreamRequest:
    """One connection to the stream: where, with which headers, and its HTTP timeout."""

    path: str
    headers: dict[str, str]
    timeout: httpx.Timeout


class Follower:
    """A task's stream as seen so far, and how to go on with it."""

    def __init__(
        self,
        server: str,
        deployment: str,
        task_id: str,
        *,
        last_event_id: int | None,
        timeout: float | None,
        client_timeout: float | None,
        now: float,
    ) -> None:
        self.server = server
        self.task_id = task_id
        #: The sequence number of the last event seen, where a reconnection resumes.
        self.last_event_id = last_event_id
        #: The task's final status, once the ``end`` event arrived.
        self.status: str | None = None
        self._path = tasks_path(deployment, task_id, "events")
        self._timeout = timeout
        self._deadline = now + timeout if timeout is not None else math.inf
        self._client_timeout = client_timeout
        self._retry = 1.0
        self._failures = 0
        self._connected_at = now
        self._capped = False
        self._reached = False
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    @property
    def ended(self) -> bool:
        """True once the server said the stream is over."""
        return self.status is not None

    def connect(self, now: float) -> StreamRequest:
        """The request of the next connection (resuming after the last event seen)."""
        self._check_deadline(now)
        self._connected_at = now
        self._fields, self._data = {}, []
        headers = {"Accept": SSE, "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        quiet = math.inf
        if self._client_timeout is not None:
            quiet = max(QUIET_LIMIT, self._client_timeout)
        remaining = self._deadline - now
        # Reads bounded by the deadline rather than by silence: see ``stale``.
        self._capped = remaining < quiet
        read = min(remaining, quiet)
        return StreamRequest(
            path=self._path,
            headers=headers,
            timeout=httpx.Timeout(
                self._client_timeout, read=None if math.isinf(read) else max(read, 0.01)
            ),
        )

    def opened(self, response: httpx.Response) -> None:
        """Check a connection's answer (read when it is an error): raise the API's error."""
        self._reached = True
        if response.status_code >= 400:
            outcome(_NO_CALL, response)

    def feed(self, line: str, now: float) -> EventItem | None:
        """Take one line of the stream; return the event it completes, if any."""
        self._check_deadline(now)
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self._failures = 0  # a keep-alive: this connection is alive
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "retry" and value.isdigit():
                self._retry = min(int(value) / 1000, MAX_DELAY)
            elif name in {"id", "event"}:
                self._fields[name] = value
        return None

    def stale(self, now: float) -> bool:
        """True when this connection's read timeout could outlast the caller's deadline by
        more than the slack allowed: reconnect (nothing is lost) with a shorter one."""
        if self._timeout is None or not self._capped:
            return False
        return now - self._connected_at > max(0.25, 0.1 * self._timeout)

    def dropped(self, exc: httpx.TransportError | None, now: float) -> float:
        """The connection broke (or ended early): seconds to wait before reconnecting, or
        raise when past the deadline or after too many failures in a row."""
        self._check_deadline(now)
        self._failures += 1
        if exc is not None and not self._reached:
            # Never reached at all (a wrong URL, a server that is down): say so at once.
            raise transport_error(self.server, exc) from exc
        if self._failures > MAX_FAILURES:
            if exc is None:
                raise ConnectionFailed(
                    f"the event stream of task {self.task_id} keeps closing before its end"
                )
            raise transport_error(self.server, exc) from exc
        if self._failures == 1:
            return 0.0
        return min(self._retry * (self._failures - 1), MAX_DELAY, self._deadline - now)

    def _dispatch(self) -> EventItem | None:
        fields, data = self._fields, "\n".join(self._data)
        self._fields, self._data = {}, []
        if not data:
            return None
        try:
            payload = json.loads(data)
            if fields.get("event") == "end":
                self.status = str(payload["status"])
                return None
            item = EventItem(
                seq=int(fields["id"]),
                type=str(payload["type"]),
                qualified_name=str(payload.get("qualified_name") or ""),
                data=dict(payload.get("data") or {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConnectionFailed(
                f"the event stream of task {self.task_id} sent a malformed event: {data[:200]!r}"
            ) from exc
        self.last_event_id = item.seq
        self._failures = 0
        return item

    def _check_deadline(self, now: float) -> None:
        if now >= self._deadline:
            raise TaskTimeout(
                504,
                f"task {self.task_id} has not ended after {self._timeout:g} s; it keeps running",
                {"task_id": self.task_id, "last_event_id": self.last_event_id},
            )


def _no_decode(_data: object) -> None:
    return None


#: A stream's error answers are decoded like any call's.
_NO_CALL: Call[None] = Call("GET", "", _no_decode)
