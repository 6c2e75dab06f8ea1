"""The entry points ``GET /`` and ``GET /status/``, and errors of paths the API does not have."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask.testing import FlaskClient

from app.errors import RETRY_AFTER
from app.factory import create_app
from config.settings import Settings
from tests.app.conftest import STRUCTURED, assert_error, deployed, ok
from tests.conftest import MULTISTEP, QUICKSTART


def test_root_links_to_the_docs_and_the_status(client: FlaskClient) -> None:
    # When the root is read
    links = ok(client.get("/"))
    # Then it holds LlamaDeploy's two links, and both lead somewhere
    assert set(links) == {"swagger_docs", "status"}
    assert urlsplit(links["swagger_docs"]).path == "/docs"
    assert urlsplit(links["status"]).path == "/status/"
    assert client.get(urlsplit(links["swagger_docs"]).path).status_code == 200
    assert ok(client.get(urlsplit(links["status"]).path))["status"] == "Healthy"


def test_status_of_an_empty_server(client: FlaskClient, settings: Settings) -> None:
    # Given nothing is deployed, when the status is read
    status = ok(client.get("/status/"))
    # Then it is LlamaDeploy's Status, healthy and empty
    assert status == {
        "status": "Healthy",
        "status_message": "",
        "max_deployments": settings.max_deployments,
        "deployments": [],
    }


def test_status_lists_the_deployments_by_name(client: FlaskClient) -> None:
    # Given three deployments
    for path in (QUICKSTART, STRUCTURED, MULTISTEP):
        deployed(client, path)
    # When the status is read
    status = ok(client.get("/status/"))
    # Then it names them all
    assert status["status"] == "Healthy"
    assert sorted(status["deployments"]) == ["MultiStep", "QuickStart", "Structured"]


def test_status_forgets_a_deleted_deployment(client: FlaskClient) -> None:
    # Given two deployments, one of them deleted
    deployed(client, QUICKSTART)
    deployed(client, STRUCTURED)
    assert client.delete("/deployments/QuickStart").status_code == 204
    # Then the status names only the other one
    assert ok(client.get("/status/"))["deployments"] == ["Structured"]


def test_unknown_path_is_a_404_in_the_error_shape(client: FlaskClient) -> None:
    assert_error(client.get("/no/such/path"), 404)


def test_wrong_method_is_a_405_in_the_error_shape(client: FlaskClient) -> None:
    assert_error(client.put("/status/"), 405)


def test_an_unreachable_database_answers_503_with_a_retry_hint(tmp_path: Path) -> None:
    # Given an API whose database does not answer (nothing listens on its port)
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/celeriac?connect_timeout=2",
    )
    app = create_app(settings)
    # When a request needs the database
    response = app.test_client().get("/status/")
    # Then it is told to try again later, in the usual error shape, not given a 500
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER)
    assert response.get_json() == {
        "code": 503,
        "status": "Service Unavailable",
        "message": "the database is unavailable; try again in a moment",
    }
