"""``/healthz`` and ``/readyz``: open to all, and quick even when the database hangs.

The outages are real: a database port where nothing listens, a database port that accepts
connections and never answers, a broker port where nothing listens."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.factory import create_app
from app.server import Server
from config.settings import Settings
from tests.app.conftest import assert_error, ok
from tests.support.network import closed_port

#: What "within about a second" means here: the probe's own deadline (0.8 s) and room for a
#: loaded test machine.
BOUND = 1.25


def timed(client: FlaskClient, path: str) -> tuple[float, TestResponse]:
    began = time.monotonic()
    response = client.get(path)
    return time.monotonic() - began, response


def check_threads(name: str) -> list[threading.Thread]:
    """The live threads of a readiness check."""
    return [t for t in threading.enumerate() if t.name == f"celeriac-check-{name}"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port whose listener accepts connections (in the kernel) and never answers,
    like a database server that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def app_with(tmp_path: Path, **settings: object) -> Flask:
    """An API server (no workers) with these settings."""
    return create_app(Settings(data_dir=tmp_path / ".celeriac", **settings))  # type: ignore[arg-type]


@pytest.fixture
def hanging_database(tmp_path: Path, silent_port: int) -> Iterator[Flask]:
    """An API server whose PostgreSQL accepts connections and then says nothing."""
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{silent_port}/celeriac"
    app = app_with(tmp_path, database_url=url, database_timeout=1.0)
    yield app
    app.extensions["celeriac"].close()


def test_healthz_says_the_process_is_alive(client: FlaskClient) -> None:
    assert ok(client.get("/healthz")) == {"status": "ok"}


def test_readyz_checks_the_database_and_the_broker(client: FlaskClient) -> None:
    took, response = timed(client, "/readyz")
    body = ok(response)
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert 0 <= check["seconds"] < BOUND
        assert "reason" not in check
    assert took < BOUND


def test_probes_need_no_token_when_everything_else_does(
    server: Server, client: FlaskClient
) -> None:
    # Given a server with tokens, where a read without one is refused
    server.plane.tokens.create("admin", None)
    assert_error(client.get("/deployments/"), 401)
    # Then the probes answer a caller without a token
    assert ok(client.get("/healthz")) == {"status": "ok"}
    assert ok(client.get("/readyz"))["status"] == "ready"


def test_readyz_names_a_database_where_nothing_listens(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    # Given an API server whose database port refuses connections
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/celeriac"
    app = app_with(tmp_path, database_url=url)
    try:
        # When it is probed
        took, response = timed(app.test_client(), "/readyz")
        # Then it is not ready, and says that the database is why, and how it failed
        body = assert_error(response, 503)
        assert response.headers["Retry-After"]
        assert body["message"].startswith("not ready: database: OperationalError: ")
        assert "broker" not in body["message"]
        database, broker = body["errors"]["database"], body["errors"]["broker"]
        assert database["ok"] is False
        assert database["reason"].startswith("OperationalError: ")
        assert broker == {"ok": True, "seconds": broker["seconds"]}
        assert took < BOUND
        # And /healthz, which touches no database, is still fine
        assert ok(app.test_client().get("/healthz")) == {"status": "ok"}
    finally:
        app.extensions["celeriac"].close()


def test_readyz_answers_within_a_second_when_the_database_hangs(
    hanging_database: Flask,
) -> None:
    client = hanging_database.test_client()
    # When a database that accepts and never answers is probed, five times in a row
    answers = [timed(client, "/readyz") for _ in range(5)]
    # Then each probe answers 503 naming the database, within about a second, although
    # connecting takes 2 s to give up (libpq's shortest connect_timeout)
    for took, response in answers:
        body = assert_error(response, 503)
        assert body["message"].startswith("not ready: database: ")
        assert body["errors"]["database"]["ok"] is False
        assert body["errors"]["broker"]["ok"] is True
        assert took < BOUND, took
    # And the probes that came while a check still ran waited for it instead of starting
    # another: one thread at most, however many probes
    assert len(check_threads("database")) <= 1
    reasons = [response.get_json()["errors"]["database"]["reason"] for _, response in answers]
    waited = [float(m[1]) for r in reasons if (m := re.fullmatch(r"no answer after ([\d.]+) s", r))]
    assert reasons[0].startswith("no answer after "), reasons
    assert max(waited) > 1.2, reasons  # the second probe waited on the first one's check


def test_probes_at_once_share_one_check(hanging_database: Flask) -> None:
    # When eight probes come at once while the database hangs
    answers: list[tuple[float, int]] = []

    def probe() -> None:
        took, response = timed(hanging_database.test_client(), "/readyz")
        answers.append((took, response.status_code))

    probes = [threading.Thread(target=probe) for _ in range(8)]
    for thread in probes:
        thread.start()
    for thread in probes:
        thread.join(timeout=10)
    # Then each answers 503 within about a second, and only one check ran for them all
    assert len(answers) == 8
    assert all(status == 503 and took < BOUND for took, status in answers), answers
    assert len(check_threads("database")) <= 1


def test_healthz_answers_at_once_when_the_database_hangs(hanging_database: Flask) -> None:
    took, response = timed(hanging_database.test_client(), "/healthz")
    assert ok(response) == {"status": "ok"}
    assert took < 0.1


def test_readyz_names_a_broker_where_nothing_listens(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    # Given an API server whose Redis broker port refuses connections
    app = app_with(tmp_path, broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    try:
        # When it is probed
        took, response = timed(app.test_client(), "/readyz")
        # Then the broker is named, the database is fine
        body = assert_error(response, 503)
        assert body["message"].startswith("not ready: broker: ")
        assert body["errors"]["broker"]["ok"] is False
        assert body["errors"]["database"]["ok"] is True
        assert took < BOUND
    finally:
        app.extensions["celeriac"].close()


def test_both_probes_are_documented_as_open(client: FlaskClient) -> None:
    paths = ok(client.get("/openapi.json"))["paths"]
    for path in ("/healthz", "/readyz"):
        operation = paths[path]["get"]
        assert operation["security"] == []
        assert "200" in operation["responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
