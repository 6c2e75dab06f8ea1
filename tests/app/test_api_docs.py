"""The generated OpenAPI document and the Swagger UI page."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import ok

D = "/deployments/{deployment_name}"

#: Every path of the API with its methods (LlamaDeploy's, plus Celeriac's additions).
OPERATIONS = {
    "/": {"get"},
    "/status/": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
    "/status/metrics": {"get"},
    "/deployments/": {"get"},
    "/deployments/create": {"post"},
    D: {"get", "delete"},
    f"{D}/tasks/run": {"post"},
    f"{D}/tasks/create": {"post"},
    f"{D}/tasks": {"get"},
    f"{D}/tasks/{{task_id}}": {"get"},
    f"{D}/tasks/{{task_id}}/results": {"get"},
    f"{D}/tasks/{{task_id}}/attempts": {"get"},
    f"{D}/sessions": {"get"},
    f"{D}/sessions/create": {"post"},
    f"{D}/sessions/delete": {"post"},
    f"{D}/sessions/{{session_id}}": {"get", "delete"},
    # LlamaIndex's workflow-server API, per deployment
    f"{D}/health": {"get"},
    f"{D}/workflows": {"get"},
    f"{D}/workflows/{{name}}/run": {"post"},
    f"{D}/workflows/{{name}}/run-nowait": {"post"},
    f"{D}/workflows/{{name}}/schema": {"get"},
    f"{D}/workflows/{{name}}/events": {"get"},
    f"{D}/workflows/{{name}}/representation": {"get"},
    f"{D}/handlers": {"get"},
    f"{D}/handlers/{{handler_id}}": {"get"},
    f"{D}/handlers/{{handler_id}}/cancel": {"post"},
    f"{D}/events/{{handler_id}}": {"get", "post"},
}

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def openapi(client: FlaskClient) -> dict[str, Any]:
    """The OpenAPI document the server publishes."""
    response = client.get("/openapi.json")
    assert response.content_type.startswith("application/json")
    document: dict[str, Any] = ok(response)
    return document


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a ``$ref`` (and an array's ``items``) to the component schema it names."""
    if schema.get("type") == "array":
        schema = schema["items"]
    ref = schema["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    component: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return component


def success_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The component schema of an operation's 200 response."""
    response = document["paths"][path][method]["responses"]["200"]
    return resolve(document, response["content"]["application/json"]["schema"])


def test_document_is_openapi_3_1(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    assert openapi["info"]["title"] == "Celeriac"
    assert openapi["info"]["version"]


def test_document_lists_every_path_and_method(openapi: dict[str, Any]) -> None:
    documented = {path: set(item) & METHODS for path, item in openapi["paths"].items()}
    missing = {path: methods - documented.get(path, set()) for path, methods in OPERATIONS.items()}
    assert {path: m for path, m in missing.items() if m} == {}


def test_every_operation_has_a_summary(openapi: dict[str, Any]) -> None:
    for path, methods in OPERATIONS.items():
        for method in methods:
            assert openapi["paths"][path][method].get("summary"), (method, path)


def test_task_schema_has_llamadeploy_fields_and_status(openapi: dict[str, Any]) -> None:
    task = success_schema(openapi, f"{D}/tasks/create", "post")
    assert success_schema(openapi, f"{D}/tasks", "get") == task
    assert {
        "task_id",
        "session_id",
        "service_id",
        "input",
        "status",
        "result",
        "error",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    } <= set(task["properties"])
    assert set(task["properties"]["status"]["enum"]) >= {"queued", "running", "succeeded", "failed"}


def test_a_task_read_alone_has_its_attempts(openapi: dict[str, Any]) -> None:
    task = success_schema(openapi, f"{D}/tasks/create", "post")
    detail = success_schema(openapi, f"{D}/tasks/{{task_id}}", "get")
    # One task read alone is a task with each of its runs
    properties = dict(detail["properties"])
    history = properties.pop("attempt_history")
    assert properties == task["properties"]
    assert history["type"] == "array"
    attempt = resolve(openapi, history["items"])
    assert attempt == success_schema(openapi, f"{D}/tasks/{{task_id}}/attempts", "get")
    assert set(attempt["properties"]) == {
        "attempt",
        "worker",
        "started_at",
        "finished_at",
        "outcome",
        "error",
    }
    assert set(attempt["properties"]["outcome"]["enum"]) == {
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "lost",
        "parked",
        None,
    }


def test_task_definition_is_the_body_of_run_and_create(openapi: dict[str, Any]) -> None:
    for path in (f"{D}/tasks/run", f"{D}/tasks/create"):
        body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        definition = resolve(openapi, body["schema"])
        assert {"input", "task_id", "session_id", "service_id"} <= set(definition["properties"])


def test_result_session_deployment_and_status_schemas(openapi: dict[str, Any]) -> None:
    result = success_schema(openapi, f"{D}/tasks/{{task_id}}/results", "get")
    assert {"task_id", "history", "result", "data", "status"} <= set(result["properties"])
    session = success_schema(openapi, f"{D}/sessions/create", "post")
    assert {"session_id", "task_ids", "state"} <= set(session["properties"])
    assert success_schema(openapi, f"{D}/sessions/{{session_id}}", "get") == session
    deployment = success_schema(openapi, "/deployments/create", "post")
    assert {"name", "services", "default_service", "version"} <= set(deployment["properties"])
    status = success_schema(openapi, "/status/", "get")
    assert {"status", "status_message", "max_deployments", "deployments"} <= set(
        status["properties"]
    )


def test_handler_schema_has_the_clients_fields(openapi: dict[str, Any]) -> None:
    handler = success_schema(openapi, f"{D}/handlers/{{handler_id}}", "get")
    assert success_schema(openapi, f"{D}/workflows/{{name}}/run", "post") == handler
    assert {
        "handler_id",
        "workflow_name",
        "run_id",
        "status",
        "error",
        "result",
        "started_at",
        "updated_at",
        "completed_at",
    } <= set(handler["properties"])
    assert handler["properties"]["status"]["enum"] == [
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    cancel = openapi["paths"][f"{D}/handlers/{{handler_id}}/cancel"]["post"]["responses"]
    assert {"200", "409"} <= set(cancel)
    tasks = f"{D}/tasks/{{task_id}}"
    for control in ("cancel", "retry"):
        assert {"200", "409"} <= set(openapi["paths"][f"{tasks}/{control}"]["post"]["responses"])


def test_create_deployment_takes_a_multipart_file(openapi: dict[str, Any]) -> None:
    operation = openapi["paths"]["/deployments/create"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = resolve(openapi, form) if "$ref" in form else form
    assert "config_file" in form["properties"]
    query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    assert {"base_path", "reload", "local"} <= query


def test_error_schema_is_the_one_error_shape(openapi: dict[str, Any]) -> None:
    error = openapi["components"]["schemas"]["Error"]
    assert {"code", "status", "message", "errors"} <= set(error["properties"])


def test_swagger_ui_page(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    page = response.get_data(as_text=True)
    assert "swagger-ui" in page
    assert "openapi.json" in page


def test_swagger_ui_files_are_served_locally(client: FlaskClient) -> None:
    # Given the docs page, which must work without internet access
    page = client.get("/docs").get_data(as_text=True)
    # Then it loads Swagger UI from this server, and the files are there
    assert "/docs/static/swagger-ui-bundle.js" in page
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        response = client.get(f"/docs/static/{name}")
        assert response.status_code == 200, name
        assert len(response.get_data()) > 10_000, name
        response.close()
    assert client.get("/docs/static/../../setup.cfg").status_code == 404
