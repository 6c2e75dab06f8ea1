"""Tests of settings read from ``CELERIAC_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import Settings


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    settings = Settings.from_env({"CELERIAC_PORT": "", "UNRELATED": "x"})
    assert settings == Settings()


def test_variables_are_read_as_the_type_of_their_field() -> None:
    settings = Settings.from_env(
        {
            "CELERIAC_PORT": "8080",
            "CELERIAC_RUN_TIMEOUT": "2.5",
            "CELERIAC_DATA_DIR": "/tmp/somewhere",
            "CELERIAC_BROKER_URL": "redis://127.0.0.1:6379/0",
            "CELERIAC_TASK_EVENTS": "yes",
        }
    )
    assert settings.port == 8080
    assert settings.run_timeout == 2.5
    assert settings.data_dir == Path("/tmp/somewhere")
    assert settings.transport == "redis"
    assert settings.task_events is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), (" on ", True), ("0", False), ("false", False), ("Off", False)],
)
def test_yes_or_no_variables_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"CELERIAC_TASK_EVENTS": raw}).task_events is expected


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("CELERIAC_TASK_EVENTS", "ture", "is not a yes or no"),
        ("CELERIAC_PORT", "eighty", "is not a valid number"),
        ("CELERIAC_RUN_TIMEOUT", "soon", "is not a valid number"),
    ],
)
def test_a_malformed_value_is_refused_with_its_variable_named(
    name: str, raw: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})
    assert str(caught.value).startswith(f"{name}: {raw!r} {reason}")


def test_the_security_settings_are_read_and_the_token_never_shown() -> None:
    settings = Settings.from_env(
        {
            "CELERIAC_TOKEN": "clr_secret",
            "CELERIAC_INSECURE_NO_AUTH": "1",
            "CELERIAC_CORS_ORIGINS": "https://app.example, http://127.0.0.1:8080/ https://b.example",
        }
    )
    assert settings.token == "clr_secret"
    assert "clr_secret" not in repr(settings)
    assert settings.insecure_no_auth is True
    assert settings.cors_origin_list == (
        "https://app.example",
        "http://127.0.0.1:8080",
        "https://b.example",
    )
    assert Settings().cors_origin_list == ()
    assert Settings().insecure_no_auth is False


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("myhost", False),
        ("localhost.example", False),
    ],
)
def test_loopback_is_an_address_of_this_host_only(host: str, loopback: bool) -> None:
    assert Settings(host=host).loopback is loopback


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://bob:s3cret@db:5432/x", "postgresql+psycopg://bob:***@db:5432/x"),
        ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://bob:p@ss@db/x", "postgresql://bob:***@db/x"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("sqlite:////srv/celeriac.db", "sqlite:////srv/celeriac.db"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    settings = Settings(database_url=url, broker_url=url)
    assert settings.shown_database_url == shown
    assert settings.shown_broker_url == shown
