"""The whole HTTP API, driven by schemathesis from its own OpenAPI document.

Every operation gets generated requests, valid ones (some naming a deployment, a session, a
task that exist) and invalid ones: no answer may be a 500,
every answer must match what the document says of it (status, headers, body, content type), a
request the document allows must not be refused and one it forbids must be, and a server
with tokens refuses a request without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from kombu.transport import memory
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from app.server import Server
from config.settings import Settings
from tests.app.conftest import ok, wait_for_task
from tests.conftest import QUICKSTART

pytestmark = pytest.mark.slow

#: Requests per operation, for each kind (valid, invalid) and each server.
EXAMPLES = 25
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The examples are requests: slow ones, and a filtered-out share, are expected.
    suppress_health_check=list(HealthCheck),
    database=None,
)

#: Operations whose documented-valid requests may be refused, and why: their bodies carry a
#: YAML file or JSON text, whose grammar a JSON Schema of a string or a file cannot state.
TEXT_BODIES = {
    "POST /deployments/create": "config_file is a deployment file (YAML)",
    "POST /deployments/{deployment_name}/tasks/{task_id}/events": "event_obj_str is JSON text",
    "POST /deployments/{deployment_name}/events/{handler_id}": "event is JSON text",
}

#: Statuses a server may answer with: never a 500; the other 5xx are the API's documented
#: answers about a task or the database (a task failed: 502; the database is away: 503; a
#: run outlasted its ``timeout``: 504; an operation not built yet: 501).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "not_a_server_error": {
                "expected-statuses": ["2xx", "3xx", "4xx", "501", "502", "503", "504"]
            }
        }
    }
)

Served = tuple[Server, "str | None"]


def served(settings: Settings, token_scope: str | None) -> Iterator[Served]:
    """A server with in-process workers; with a token of ``token_scope``, if given (else an
    open server)."""
    server = Server(settings.replace(run_timeout=5.0))
    server.start_workers()
    try:
        token = server.plane.tokens.create(token_scope, None).token if token_scope else None
        yield server, token
    finally:
        server.close()
        memory.Channel.queues.clear()


@pytest.fixture
def open_server(settings: Settings) -> Iterator[Served]:
    yield from served(settings, None)


@pytest.fixture
def token_server(settings: Settings) -> Iterator[Served]:
    yield from served(settings, "admin")


def document(server: Server) -> dict[str, Any]:
    spec: dict[str, Any] = server.app.test_client().get("/openapi.json").get_json()
    return spec


def known(server: Server, token: str | None) -> dict[str, str]:
    """Path parameters that name things that exist: the quick start (deployed again if a
    request deleted it), its workflow, and a finished task of one of its sessions."""
    client = server.app.test_client()
    if token:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    server.deploy(QUICKSTART)
    session = ok(client.post("/deployments/QuickStart/sessions/create"))["session_id"]
    body = {"input": "{}", "session_id": session}
    task = ok(client.post("/deployments/QuickStart/tasks/create", json=body))["task_id"]
    wait_for_task(client, "QuickStart", task)
    return {
        "deployment_name": "QuickStart",
        "name": "echo_workflow",
        "session_id": session,
        "task_id": task,
        "handler_id": task,
    }


def fuzz(server: Server, token: str | None) -> dict[str, int]:
    """Send every operation of the server's document generated requests (with ``token``,
    if given); fail listing each operation that broke a rule, with schemathesis's account
    of it. Returns how many requests each one was sent."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # The document declares the bearer scheme on every route but its own; an open server
    # (loopback, no token) needs none, so the check that a request without one is refused
    # is for the server with tokens only.
    excluded = [] if token else [schemathesis.checks.ignored_auth]
    schema = schemathesis.openapi.from_wsgi("/openapi.json", server.app, config=CONFIG)
    sent: dict[str, int] = {}
    broken: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        checks = Checks(headers, list(excluded))
        if operation.label in TEXT_BODIES:
            checks.excluded.append(schemathesis.checks.positive_data_acceptance)
        failure = checks.run(operation, known(server, token))
        sent[operation.label] = checks.sent
        if failure is not None:
            broken[operation.label] = failure
    assert not broken, "\n\n".join(f"{label}\n{why}" for label, why in broken.items())
    return sent


class Checks:
    """Schemathesis's checks on the requests generated for one operation."""

    def __init__(self, headers: dict[str, str] | None, excluded: list[Any]) -> None:
        self.headers = headers
        self.excluded = excluded
        self.sent = 0

    def send(self, case: schemathesis.Case) -> None:
        self.sent += 1
        case.call_and_validate(headers=self.headers, excluded_checks=self.excluded)

    def run(self, operation: Any, ids: dict[str, str]) -> str | None:
        """Valid requests naming the deployment (and mostly things not found in it), valid
        ones naming things that exist, then invalid ones; the first failure, if any."""
        names = {p.name for p in operation.path_parameters}
        deployment = {k: v for k, v in ids.items() if k == "deployment_name"}
        existing = {k: v for k, v in ids.items() if k in names}
        strategies = (
            operation.as_strategy(path_parameters=deployment),
            operation.as_strategy(path_parameters=existing),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )
        for strategy in strategies:
            try:
                FUZZ(given(case=strategy)(self.send))()
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert strategy is strategies[-1] and not names, operation.label
            except (Exception, FailureGroup) as exc:
                return f"{type(exc).__name__}: {exc}"
        return None


def operations(spec: dict[str, Any]) -> set[str]:
    """``METHOD /path`` of every operation the document has."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method in item
        if method in methods
    }


def test_an_open_server_answers_every_request_as_documented(open_server: Served) -> None:
    server, _ = open_server
    sent = fuzz(server, None)
    assert set(sent) == operations(document(server))
    assert all(sent.values()), sent


def test_a_server_with_tokens_answers_every_request_as_documented(token_server: Served) -> None:
    server, token = token_server
    sent = fuzz(server, token)
    assert set(sent) == operations(document(server))
    assert all(sent.values()), sent


def test_a_method_a_path_lacks_is_405_with_the_methods_it_has(open_server: Served) -> None:
    server, _ = open_server
    client = server.app.test_client()
    methods = {"GET", "PUT", "POST", "DELETE", "PATCH"}
    documented = {
        path: {m.upper() for m in item} & methods
        for path, item in document(server)["paths"].items()
    }
    tried = 0
    for path in documented:
        named = path.replace("{deployment_name}", "QuickStart").replace("{version}", "1")
        url = re.sub(r"\{(\w+)\}", r"\1", named)
        # (``/deployments/create`` is also ``/deployments/{deployment_name}``)
        served = set().union(*(o for t, o in documented.items() if _matches(t, url)))
        for method in sorted(methods - served):
            response = client.open(url, method=method)
            assert response.status_code == 405, (method, path, response.status_code)
            allowed = {m.strip() for m in response.headers["Allow"].split(",")}
            assert served <= allowed <= served | {"HEAD", "OPTIONS"}, (method, path, allowed)
            body = response.get_json()
            assert (body["code"], body["message"]) == (405, METHOD_NOT_ALLOWED), body
            tried += 1
    assert tried > 50, tried


METHOD_NOT_ALLOWED = "The method is not allowed for the requested URL."


def _matches(template: str, url: str) -> bool:
    """Whether an OpenAPI path template (``{name}`` a segment) matches ``url``."""
    parts = re.split(r"(\{\w+\})", template)
    pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.fullmatch(pattern, url) is not None
