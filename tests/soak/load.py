"""The load: client threads submit quick, slow, failing, asking and session tasks through the
API (riding out its restarts), and one thread answers the tasks that ask a person.

Every task gets an id the soak chose, so that a submission whose answer was lost can be sent
again without running the work twice: a second try that finds the task stored gets 409.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from tests.soak.console import Console
from tests.soak.workflow import DEPLOYMENT, SERVICE, answer_for

#: How often each kind of task is chosen (a session is several tasks).
MIX = {"quick": 40, "slow": 12, "fail": 12, "ask": 16, "session": 10}
#: Seconds a task of each kind sleeps before it acts: (least, most).
SECONDS = {"quick": (0.0, 0.2), "slow": (2.0, 5.0), "fail": (0.0, 1.0), "ask": (0.0, 0.5)}
SESSION_SECONDS = (0.0, 0.5)
#: Tasks of one session, sent one after the other without waiting: (least, most).
SESSION_LENGTH = (3, 5)
#: Seconds between two submissions of one client thread: (least, most).
PAUSE = (0.2, 0.8)
#: Submitters wait while this many tasks are unfinished, so no backlog builds up.
MAX_IN_FLIGHT = 30
#: How long a client keeps trying one request through API restarts and 503s.
PATIENCE = 90.0


@dataclasses.dataclass
class Planned:
    """A task the soak sent, and what it must become."""

    task_id: str
    kind: str
    sent_at: float
    session_id: str | None = None
    position: int = 0
    #: ``submitted`` (stored and on its way), ``refused`` (503: stored as failed, never
    #: sent, as the API says), or ``unknown`` (no answer within ``PATIENCE``).
    fate: str = "submitted"


class Ledger:
    """Every task the load sent, the answers it gave, and the API's unexpected answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tasks: dict[str, Planned] = {}
        self.answered: set[str] = set()
        #: HTTP status (or transport error name) to how many times a request got it.
        self.api_errors: Counter[str] = Counter()

    def add(self, planned: Planned) -> None:
        """Note a task sent."""
        with self._lock:
            self.tasks[planned.task_id] = planned

    def asking(self) -> list[str]:
        """The asking tasks not answered yet."""
        with self._lock:
            return [
                t.task_id
                for t in self.tasks.values()
                if t.kind == "ask" and t.fate == "submitted" and t.task_id not in self.answered
            ]

    def note_answer(self, task_id: str) -> None:
        """An answer the API took."""
        with self._lock:
            self.answered.add(task_id)

    def note_error(self, what: str) -> None:
        """An answer no client should get (a 5xx other than 503)."""
        with self._lock:
            self.api_errors[what] += 1

    def all(self) -> list[Planned]:
        """A copy of every task sent so far."""
        with self._lock:
            return list(self.tasks.values())


class Client:
    """One thread's HTTP client of the API, trying again through restarts and 503s."""

    def __init__(self, server: str, ledger: Ledger, stopping: threading.Event) -> None:
        self.http = httpx.Client(base_url=server, timeout=15.0)
        self.ledger = ledger
        self.stopping = stopping

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request, sent again while the API is unreachable or answers 503 (or another
        5xx, which is noted); the first answer below 500, or ``None`` after ``PATIENCE``."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code < 500:
                return response
            if response.status_code != 503:
                self.ledger.note_error(f"HTTP {response.status_code} on {method} {path}")
            elif _stored_task(response) is not None:
                return response
            time.sleep(min(float(response.headers.get("Retry-After", 1)), 1.0))
        return None

    def create(self, task_id: str, kwargs: dict[str, Any], session_id: str | None) -> str:
        """Queue a task with this id; its fate (see :attr:`Planned.fate`)."""
        body = {"input": json.dumps(kwargs), "task_id": task_id}
        params = {"session_id": session_id} if session_id else {}
        path = f"/deployments/{DEPLOYMENT}/tasks/create"
        first = True
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            response = self.send("POST", path, json=body, params=params)
            if response is None:
                return "unknown"
            if response.status_code == 200 or (response.status_code == 409 and not first):
                return "submitted"
            if response.status_code == 503:
                stored = _stored_task(response) or {}
                return "refused" if stored.get("status") == "failed" else "submitted"
            if response.status_code != 409:
                raise RuntimeError(f"tasks/create answered {response.status_code}: {response.text}")
            first = False
        return "unknown"

    def create_session(self) -> str | None:
        """A new session's id, or ``None`` if the API did not answer in time."""
        response = self.send("POST", f"/deployments/{DEPLOYMENT}/sessions/create")
        if response is None or response.status_code != 200:
            return None
        session_id: str = response.json()["session_id"]
        return session_id

    def status(self, task_id: str) -> str | None:
        """A task's status as the API tells it (``None`` if it does not answer now)."""
        try:
            response = self.http.get(f"/deployments/{DEPLOYMENT}/tasks/{task_id}", timeout=5.0)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        status: str = response.json()["status"]
        return status

    def answer(self, task_id: str) -> bool:
        """Send the person's answer into a task; True once the API took it."""
        event = HumanResponseEvent(response=answer_for(task_id))  # type: ignore[call-arg]
        body = {"service_id": SERVICE, "event_obj_str": JsonSerializer().serialize(event)}
        response = self.send("POST", f"/deployments/{DEPLOYMENT}/tasks/{task_id}/events", json=body)
        return response is not None and response.status_code == 200

    def close(self) -> None:
        """Release the connections."""
        self.http.close()


def _stored_task(response: httpx.Response) -> dict[str, Any] | None:
    """The task a 503 says was stored before the outage (``errors``), if any."""
    try:
        errors = response.json().get("errors")
    except ValueError:
        return None
    return errors if isinstance(errors, dict) and "task_id" in errors else None


class Load:
    """Client threads that submit tasks until told to stop, and a thread that answers."""

    def __init__(
        self,
        server: str,
        runs: Path,
        seed: int,
        clients: int,
        in_flight: Callable[[], int],
        console: Console,
    ) -> None:
        self.server = server
        self.runs = runs
        self.seed = seed
        self.in_flight = in_flight
        self.console = console
        self.ledger = Ledger()
        self.submitting = threading.Event()
        self.answering = threading.Event()
        self.threads = [
            threading.Thread(target=self._submit_loop, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(clients)
        ]
        self.threads.append(threading.Thread(target=self._answer_loop, name="hitl", daemon=True))

    def start(self) -> None:
        """Start every client thread."""
        for thread in self.threads:
            thread.start()

    def stop_submitting(self) -> None:
        """Let each client finish what it is sending, and send no more."""
        self.submitting.set()
        for thread in self.threads[:-1]:
            thread.join(timeout=PATIENCE * 2)

    def stop_answering(self) -> None:
        """Stop the answering thread."""
        self.answering.set()
        self.threads[-1].join(timeout=PATIENCE)

    # -- submitting -------------------------------------------------------------------------------

    def _submit_loop(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-client-{index}")
        client = Client(self.server, self.ledger, self.submitting)
        try:
            while not self.submitting.is_set():
                if self.in_flight() >= MAX_IN_FLIGHT:
                    time.sleep(0.2)
                    continue
                kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
                if kind == "session":
                    self._session(client, rng)
                else:
                    self._one(client, rng, kind)
                self.submitting.wait(rng.uniform(*PAUSE))
        except Exception as exc:  # a client thread must not die silently
            self.console.warn(f"client {index} stopped: {exc!r}")
        finally:
            client.close()

    def _one(
        self,
        client: Client,
        rng: random.Random,
        kind: str,
        session_id: str | None = None,
        position: int = 0,
    ) -> None:
        task_id = f"soak-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
        least, most = SESSION_SECONDS if kind == "session" else SECONDS[kind]
        kwargs = {
            "tag": task_id,
            "kind": kind,
            "seconds": round(rng.uniform(least, most), 2),
            "log": str(self.runs),
        }
        planned = Planned(task_id, kind, time.time(), session_id, position)
        self.ledger.add(planned)
        planned.fate = client.create(task_id, kwargs, session_id)

    def _session(self, client: Client, rng: random.Random) -> None:
        session_id = client.create_session()
        if session_id is None:
            return
        for position in range(rng.randint(*SESSION_LENGTH)):
            self._one(client, rng, "session", session_id, position)

    # -- answering --------------------------------------------------------------------------------

    def _answer_loop(self) -> None:
        client = Client(self.server, self.ledger, self.answering)
        try:
            while not self.answering.is_set():
                for task_id in self.ledger.asking():
                    if client.status(task_id) == "waiting_input" and client.answer(task_id):
                        self.ledger.note_answer(task_id)
                self.answering.wait(0.3)
        except Exception as exc:
            self.console.warn(f"the answering thread stopped: {exc!r}")
        finally:
            client.close()
