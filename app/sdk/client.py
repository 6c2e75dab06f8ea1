"""The synchronous Python client of Celeriac's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import httpx

from app.sdk.errors import ConnectionFailed, error_for
from app.sdk.models import Deployment, Session, Status, Task

DEFAULT_SERVER = "http://127.0.0.1:4501"
DEFAULT_TIMEOUT = 120.0


class Client:
    """Talks to one Celeriac API server; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.server, timeout=timeout, transport=transport)
        self.deployments = Deployments(self)
        self.tasks = Tasks(self)
        self.sessions = Sessions(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def status(self) -> Status:
        """The server's health; ``status == "Down"`` when it cannot be reached."""
        try:
            return Status.from_json(self.request("GET", "/status/"))
        except ConnectionFailed as exc:
            return Status("Down", str(exc), None, [])

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the decoded JSON, raising the SDK's errors."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.server}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text.strip()[:500]}
            raise error_for(response.status_code, body)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


class Deployments:
    """``client.deployments``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self,
        config: str | Path | IO[bytes],
        *,
        base_path: str | Path | None = None,
        reload: bool = False,
    ) -> Deployment:
        """Deploy a YAML file (a path or an open binary file); local sources are relative to
        ``base_path``, by default the file's folder."""
        if isinstance(config, (str, Path)):
            path = Path(config)
            content = path.read_bytes()
            base = base_path if base_path is not None else path.resolve().parent
        else:
            content = config.read()
            base = base_path if base_path is not None else Path.cwd()
        data = self._c.request(
            "POST",
            "/deployments/create",
            params={"base_path": str(base), "reload": str(reload).lower()},
            files={"config_file": ("deployment.yml", content, "application/x-yaml")},
        )
        return Deployment.from_json(data)

    def list(self) -> list[Deployment]:
        """Every deployment."""
        return [Deployment.from_json(d) for d in self._c.request("GET", "/deployments/")]

    def get(self, name: str) -> Deployment:
        """One deployment."""
        return Deployment.from_json(self._c.request("GET", f"/deployments/{name}"))

    def delete(self, name: str) -> None:
        """Delete a deployment with its sessions, tasks and events."""
        self._c.request("DELETE", f"/deployments/{name}")


class Tasks:
    """``client.tasks``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def run(
        self,
        deployment: str,
        input: dict[str, Any] | None = None,
        *,
        service: str | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a task and return its result; :class:`TaskFailed` if the workflow fails."""
        params = {"session_id": session_id} if session_id else {}
        if timeout is not None:
            params["timeout"] = str(timeout)
        return self._c.request(
            "POST",
            f"/deployments/{deployment}/tasks/run",
            params=params,
            json=_definition(input, service),
            timeout=_wait_timeout(self._c.timeout, timeout),
        )

    def create(
        self,
        deployment: str,
        input: dict[str, Any] | None = None,
        *,
        service: str | None = None,
        session_id: str | None = None,
    ) -> Task:
        """Queue a task and return it without waiting."""
        params = {"session_id": session_id} if session_id else {}
        data = self._c.request(
            "POST",
            f"/deployments/{deployment}/tasks/create",
            params=params,
            json=_definition(input, service),
        )
        return Task.from_json(data)

    def get(self, deployment: str, task_id: str) -> Task:
        """A task's status and outcome."""
        return Task.from_json(self._c.request("GET", f"/deployments/{deployment}/tasks/{task_id}"))

    def list(
        self,
        deployment: str,
        *,
        session_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Task]:
        """A deployment's tasks, oldest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if session_id:
            params["session_id"] = session_id
        data = self._c.request("GET", f"/deployments/{deployment}/tasks", params=params)
        return [Task.from_json(t) for t in data]

    def results(self, deployment: str, task_id: str) -> dict[str, Any] | None:
        """LlamaDeploy's ``TaskResult`` once the task ended, else None."""
        path = f"/deployments/{deployment}/tasks/{task_id}/results"
        return self._c.request("GET", path)


class Sessions:
    """``client.sessions``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, deployment: str) -> Session:
        """A new session."""
        data = self._c.request("POST", f"/deployments/{deployment}/sessions/create")
        return Session.from_json(data)

    def list(self, deployment: str) -> list[Session]:
        """The live sessions of a deployment."""
        data = self._c.request("GET", f"/deployments/{deployment}/sessions")
        return [Session.from_json(s) for s in data]

    def get(self, deployment: str, session_id: str) -> Session:
        """One session."""
        path = f"/deployments/{deployment}/sessions/{session_id}"
        return Session.from_json(self._c.request("GET", path))

    def delete(self, deployment: str, session_id: str) -> None:
        """Delete a session (its tasks stay readable)."""
        path = f"/deployments/{deployment}/sessions/delete"
        self._c.request("POST", path, params={"session_id": session_id})


def _definition(input: dict[str, Any] | None, service: str | None) -> dict[str, Any]:
    """LlamaDeploy's ``TaskDefinition`` body."""
    body: dict[str, Any] = {"input": json.dumps(input or {})}
    if service:
        body["service_id"] = service
    return body


def _wait_timeout(client_timeout: float | None, wait: float | None) -> httpx.Timeout:
    """A blocking run needs the HTTP read to outlast the server-side wait."""
    if client_timeout is None:
        return httpx.Timeout(None)
    return httpx.Timeout(client_timeout, read=max(client_timeout, (wait or 0) + 5))
