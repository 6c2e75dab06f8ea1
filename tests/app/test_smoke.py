"""A first end-to-end check through the Flask app and real in-process workers."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.conftest import QUICKSTART, deploy


def test_quickstart_echoes_through_a_real_worker(client: FlaskClient) -> None:
    # Given the quick start is deployed
    assert deploy(client, QUICKSTART).status_code == 200
    # When a task runs
    response = client.post(
        "/deployments/QuickStart/tasks/run", json={"input": '{"message": "hello"}'}
    )
    # Then the workflow's result comes back
    assert response.status_code == 200, response.json
    assert response.json == "Message received: hello"


def test_live_server_answers_over_http(live_server: str) -> None:
    import httpx

    response = httpx.get(f"{live_server}/status/")
    assert response.status_code == 200
    assert response.json()["status"] == "Healthy"
