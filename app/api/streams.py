"""The wire formats of event streams: NDJSON (LlamaDeploy's) and server-sent events."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from flask import Response, request, stream_with_context

from app.api.schemas import LARGEST_INT
from app.control.events import StreamedEvent, StreamEnd
from app.errors import InvalidInput

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def ndjson_lines(events: Iterator[StreamedEvent | StreamEnd | None], *, raw: bool) -> Iterator[str]:
    """One JSON object per line: the event's fields, or with ``raw`` llama-index's
    serialized form (``__is_pydantic``, ``value``, ``qualified_name``)."""
    for item in events:
        if item is None:
            yield "\n"  # keep-alive: an empty line, which NDJSON readers skip
        elif isinstance(item, StreamEnd):
            return
        elif raw:
            wrapped = {
                "__is_pydantic": True,
                "value": item.data,
                "qualified_name": item.qualified_name,
            }
            yield json.dumps(wrapped) + "\n"
        else:
            yield json.dumps(item.data) + "\n"


def sse_lines(events: Iterator[StreamedEvent | StreamEnd | None], task_id: str) -> Iterator[str]:
    """Server-sent events: ``id`` is the event's sequence number (for ``Last-Event-ID``),
    ``event`` its type; a final ``end`` event carries the task's status."""
    yield "retry: 1000\n\n"
    for item in events:
        if item is None:
            yield ": keep-alive\n\n"
        elif isinstance(item, StreamEnd):
            yield f"event: end\ndata: {json.dumps({'task_id': task_id, 'status': item.status})}\n\n"
            return
        else:
            payload = {"type": item.type, "qualified_name": item.qualified_name, "data": item.data}
            yield f"id: {item.seq}\nevent: {item.type}\ndata: {json.dumps(payload)}\n\n"


def envelope_lines(
    events: Iterator[StreamedEvent | StreamEnd | None], *, sse: bool, qualified_name: bool
) -> Iterator[str]:
    """The workflow server's stream: each event as an envelope (``value``, ``type``,
    ``qualified_name``, ``types``), in SSE (``id`` is its sequence number) or NDJSON; the
    stream ends when the task ends."""
    for item in events:
        if item is None:
            yield ": keep-alive\n\n" if sse else "\n"
        elif isinstance(item, StreamEnd):
            return
        else:
            envelope = json.dumps(
                {
                    "value": item.data,
                    "qualified_name": item.qualified_name if qualified_name else None,
                    "type": item.type,
                    "types": None,
                }
            )
            yield f"id: {item.seq}\ndata: {envelope}\n\n" if sse else envelope + "\n"


def stream_response(lines: Iterator[str], mimetype: str) -> Response:
    """A streamed response of ``lines`` that proxies and caches pass on at once."""
    response = Response(stream_with_context(lines), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # let reverse proxies pass it through
    return response


def last_event_id() -> int | None:
    """The ``Last-Event-ID`` header as an event number, or None without one. A client that
    reconnects sends it with the URL it first used, so it wins over a resume point in the
    query; a header that is not an event number (-1 for before the first) is a client's
    mistake (422)."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return None
    try:
        number = int(header)
    except ValueError as exc:
        raise InvalidInput(
            "Last-Event-ID must be an event id from this stream",
            errors={"Last-Event-ID": [f"not an integer: {header[:40]!r}"]},
        ) from exc
    if not -1 <= number <= LARGEST_INT:
        raise InvalidInput(
            "Last-Event-ID must be an event id from this stream",
            errors={"Last-Event-ID": [f"must be from -1 to {LARGEST_INT}"]},
        )
    return number


def client_gone() -> Callable[[], bool] | None:
    """A check that the client of this request disconnected, where the server can tell
    (waitress, with ``channel_request_lookahead``): a request that waits for a task asks it,
    and frees its thread once the client left."""
    check = request.environ.get("waitress.client_disconnected")
    return check if callable(check) else None
