"""Fetch deployments from the control plane's HTTP API, for workers that serve them."""

from __future__ import annotations

from pathlib import Path

import httpx

from config.deployment import load_deployment_mapping
from config.errors import DeploymentSpecError
from workers.errors import ControlPlaneUnreachable, TokenRefused, UnknownDeployment
from workers.runtime import DeploymentSource, Fetch


def http_fetcher(
    server: str, base_path: Path | None = None, timeout: float = 30.0, token: str = ""
) -> Fetch:
    """A fetch function reading ``GET /deployments/{name}/spec`` from ``server``.

    ``base_path`` replaces the folder the deployment was created with, for workers on hosts
    where its local sources live elsewhere. ``token`` is the API token sent (a ``worker``
    token: the only scope whose specs carry the services' ``env`` values).
    """
    server = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def fetch(name: str) -> DeploymentSource:
        try:
            response = httpx.get(
                f"{server}/deployments/{name}/spec", timeout=timeout, headers=headers
            )
        except httpx.TransportError as exc:
            raise ControlPlaneUnreachable(
                f"cannot reach the control plane at {server}: {exc}"
            ) from exc
        if response.status_code == 404:
            raise UnknownDeployment(f"deployment {name!r} not found at {server}")
        if response.status_code in (401, 403):
            raise TokenRefused(
                f"the control plane at {server} refused this worker "
                f"({response.status_code}): give it a live token of scope worker "
                "(CELERIAC_TOKEN; celeriac tokens create --scope worker)"
            )
        if response.status_code >= 500:
            raise ControlPlaneUnreachable(
                f"the control plane at {server} answered {response.status_code} for {name!r}"
            )
        if response.status_code != 200:
            raise UnknownDeployment(
                f"the control plane at {server} answered {response.status_code} for {name!r}"
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
            raise UnknownDeployment(
                f"deployment {name!r} from {server} is unreadable: {exc}"
            ) from exc
        return DeploymentSource(spec, base_path or Path(data["base_path"]), int(data["version"]))

    return fetch
