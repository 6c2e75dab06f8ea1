"""Fetch deployments from the control plane's HTTP API, for workers that serve them."""

from __future__ import annotations

from pathlib import Path

import httpx

from config.deployment import load_deployment_mapping
from config.errors import DeploymentSpecError
from workers.errors import ControlPlaneUnreachable, UnknownDeployment
from workers.runtime import DeploymentSource, Fetch


def http_fetcher(server: str, base_path: Path | None = None, timeout: float = 30.0) -> Fetch:
    """A fetch function reading ``GET /deployments/{name}/spec`` from ``server``.

    ``base_path`` replaces the folder the deployment was created with, for workers on hosts
    where its local sources live elsewhere.
    """
    server = server.rstrip("/")

    def fetch(name: str) -> DeploymentSource:
        try:
            response = httpx.get(f"{server}/deployments/{name}/spec", timeout=timeout)
        except httpx.TransportError as exc:
            raise ControlPlaneUnreachable(
                f"cannot reach the control plane at {server}: {exc}"
            ) from exc
        if response.status_code == 404:
            raise UnknownDeployment(f"deployment {name!r} not found at {server}")
        if response.status_code >= 500:
            raise ControlPlaneUnreachable(
                f"the control plane at {server} answered {response.status_code} for {name!r}"
            )
        if response.status_code != 200:
            raise UnknownDeployment(
                f"the control plane at {server} answered {response.status_code} for {name!r}"
            )
        data = response.json()
        try:
            spec = load_deployment_mapping(data["spec"])
        except (DeploymentSpecError, KeyError) as exc:
            raise UnknownDeployment(
                f"deployment {name!r} from {server} is unreadable: {exc}"
            ) from exc
        return DeploymentSource(spec, base_path or Path(data["base_path"]), int(data["version"]))

    return fetch
