"""Fetch deployments from the control plane's HTTP API, for workers that serve them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from config.deployment import load_deployment_mapping
from config.errors import DeploymentSpecError
from workers.errors import ControlPlaneUnreachable, TokenRefused, UnknownDeployment
from workers.versions import DeploymentSource, Fetch, FetchVersion


class _Catalog:
    """Reads specs from one control plane, as one worker token."""

    def __init__(self, server: str, base_path: Path | None, timeout: float, token: str) -> None:
        self.server = server.rstrip("/")
        self.base_path = base_path
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def source(self, path: str, name: str, what: str) -> DeploymentSource:
        """The spec at ``path`` (``what`` names it in errors: a deployment, or a version)."""
        server = self.server
        try:
            response = httpx.get(f"{server}{path}", timeout=self.timeout, headers=self.headers)
        except httpx.TransportError as exc:
            raise ControlPlaneUnreachable(
                f"cannot reach the control plane at {server}: {exc}"
            ) from exc
        if response.status_code == 404:
            raise UnknownDeployment(f"{what} not found at {server}{_detail(response)}")
        if response.status_code in (401, 403):
            raise TokenRefused(
                f"the control plane at {server} refused this worker "
                f"({response.status_code}): give it a live token of scope worker "
                "(CELERIAC_TOKEN; celeriac tokens create --scope worker)"
            )
        if response.status_code >= 500:
            raise ControlPlaneUnreachable(
                f"the control plane at {server} answered {response.status_code} for {what}"
            )
        if response.status_code != 200:
            raise UnknownDeployment(
                f"the control plane at {server} answered {response.status_code} for {what}"
            )
        data = response.json()
        if data.get("env_redacted"):
            raise TokenRefused(
                f"the control plane at {server} withholds the env values of {name!r} from "
                "this worker's token: service workers need a token of scope worker"
            )
        try:
            spec = load_deployment_mapping(data["spec"])
        except (DeploymentSpecError, KeyError) as exc:
            raise UnknownDeployment(f"{what} from {server} is unreadable: {exc}") from exc
        base = self.base_path or Path(data["base_path"])
        kept = tuple(int(number) for number in data.get("kept_versions") or ())
        return DeploymentSource(spec, base, int(data["version"]), kept)


def _detail(response: httpx.Response) -> str:
    """The control plane's own message for an error, if it sent one."""
    try:
        body: Any = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {message}" if message else ""


def http_fetcher(
    server: str, base_path: Path | None = None, timeout: float = 30.0, token: str = ""
) -> Fetch:
    """A fetch function reading ``GET /deployments/{name}/spec`` from ``server``.

    ``base_path`` replaces the folder the deployment was created with, for workers on hosts
    where its local sources live elsewhere. ``token`` is the API token sent (a ``worker``
    token: the only scope whose specs carry the services' ``env`` values).
    """
    catalog = _Catalog(server, base_path, timeout, token)

    def fetch(name: str) -> DeploymentSource:
        return catalog.source(f"/deployments/{name}/spec", name, f"deployment {name!r}")

    return fetch


def http_version_fetcher(
    server: str, base_path: Path | None = None, timeout: float = 30.0, token: str = ""
) -> FetchVersion:
    """A fetch function reading ``GET /deployments/{name}/versions/{version}/spec`` (the
    version a durable task started on) from ``server``; arguments as :func:`http_fetcher`'s."""
    catalog = _Catalog(server, base_path, timeout, token)

    def fetch_version(name: str, version: int) -> DeploymentSource:
        path = f"/deployments/{name}/versions/{version}/spec"
        return catalog.source(path, name, f"version {version} of deployment {name!r}")

    return fetch_version
