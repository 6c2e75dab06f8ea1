"""Tests of config.platform: the broker and database a deployment file names, and agreement."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from config.deployment import DeploymentSpec, MessageQueueSpec, load_deployment_mapping
from config.errors import ConfigError
from config.platform import (
    broker_url,
    mask,
    platform_mismatches,
    same_broker,
    same_database,
    state_store_url,
)

MINIMAL: dict[str, Any] = {
    "name": "Minimal",
    "control-plane": {},
    "services": {
        "echo": {
            "name": "Echo",
            "source": {"type": "local", "name": "src"},
            "path": "workflow:echo_workflow",
        }
    },
}

PLATFORM_BROKER = "redis://127.0.0.1:6379/0"
PLATFORM_DATABASE = "postgresql+psycopg://postgres@127.0.0.1/celeriac"


def spec(
    message_queue: dict[str, Any] | None = None, state_store: str | None = None
) -> DeploymentSpec:
    """A valid deployment with this ``message-queue`` section and ``state_store_uri``."""
    document = copy.deepcopy(MINIMAL)
    if message_queue is not None:
        document["message-queue"] = message_queue
    if state_store is not None:
        document["control-plane"]["state_store_uri"] = state_store
    return load_deployment_mapping(document)


def queue(**section: Any) -> MessageQueueSpec:
    """The ``message-queue`` section as the deployment loader completes it."""
    return spec(section).message_queue


# --- broker_url ----------------------------------------------------------------------------------


def test_no_message_queue_and_simple_name_no_broker() -> None:
    """Leaving message-queue out, or LlamaDeploy's simple queue, means the platform's broker."""
    assert broker_url(spec().message_queue) is None
    assert broker_url(queue(type="simple", host="10.0.0.1", port=8001)) is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"type": "redis"}, "redis://localhost:6379"),
        ({"type": "redis", "url": "redis://cache:6380/4"}, "redis://cache:6380/4"),
        ({"type": "redis", "host": "cache"}, "redis://cache:6379/0"),
        ({"type": "redis", "host": "cache", "port": 6380, "db": 5}, "redis://cache:6380/5"),
        (
            {"type": "redis", "host": "cache", "username": "me", "password": "p@ss/w:rd"},
            "redis://me:p%40ss%2Fw%3Ard@cache:6379/0",
        ),
        ({"type": "redis", "host": "cache", "password": "pw"}, "redis://:pw@cache:6379/0"),
        ({"type": "redis", "host": "cache", "ssl": True}, "rediss://cache:6379/0"),
    ],
)
def test_redis_queues(section: dict[str, Any], expected: str) -> None:
    """A redis section gives its url, or a URL rebuilt from host, port, db and credentials."""
    assert broker_url(queue(**section)) == expected


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"type": "rabbitmq"}, "amqp://guest:guest@localhost/"),
        ({"type": "rabbitmq", "url": "amqp://u:p@mq:5673/vh"}, "amqp://u:p@mq:5673/vh"),
        (
            {"type": "rabbitmq", "host": "mq", "username": "u", "password": "p"},
            "amqp://u:p@mq:5672/",
        ),
        (
            {
                "type": "rabbitmq",
                "host": "mq",
                "port": 5671,
                "username": "u@x",
                "password": "p w",
                "vhost": "my vhost",
                "secure": True,
            },
            "amqps://u%40x:p%20w@mq:5671/my%20vhost",
        ),
        # Without credentials the host is not enough to rebuild a URL (as in LlamaDeploy).
        ({"type": "rabbitmq", "host": "mq", "url": "amqp://a:b@other//"}, "amqp://a:b@other//"),
    ],
)
def test_rabbitmq_queues(section: dict[str, Any], expected: str) -> None:
    """A rabbitmq section gives its url, or one rebuilt from host, credentials and vhost."""
    assert broker_url(queue(**section)) == expected


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"type": "aws"}, "sqs://"),
        ({"type": "aws", "aws_region": "eu-west-1"}, "sqs://"),
        ({"type": "aws", "aws_access_key_id": "AKIA"}, "sqs://"),
        (
            {"type": "aws", "aws_access_key_id": "AKIA", "aws_secret_access_key": "se/cr+et"},
            "sqs://AKIA:se%2Fcr%2Bet@",
        ),
    ],
)
def test_aws_queues(section: dict[str, Any], expected: str) -> None:
    """An aws section is SQS, with the credentials in the URL when both are given."""
    assert broker_url(queue(**section)) == expected


@pytest.mark.parametrize("kind", ["kafka", "solace"])
def test_kafka_and_solace_are_refused(kind: str) -> None:
    """Queue types Kombu has no transport for are refused, naming what to use instead."""
    with pytest.raises(ConfigError) as caught:
        broker_url(queue(type=kind))
    message = str(caught.value)
    assert repr(kind) in message
    assert "rabbitmq" in message and "redis" in message and "aws" in message


# --- state_store_url -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [None, ""])
def test_no_state_store_names_no_database(uri: str | None) -> None:
    """Leaving state_store_uri out means the platform's database."""
    assert state_store_url(uri) is None


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql+psycopg://user:pw@db.example:5433/celeriac",
        "postgresql://localhost/celeriac",
        "sqlite:////tmp/celeriac.db",
        "mysql+pymysql://u@h/db",
    ],
)
def test_sqlalchemy_urls_are_kept(uri: str) -> None:
    """A SQLAlchemy URL is the state store's database, as given."""
    assert state_store_url(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "redis://localhost:6379/0",
        "rediss://cache:6380",
        "unix:///var/run/redis.sock",
        "mongodb://localhost:27017",
        "mongodb+srv://user:pw@cluster.example/db",
        "REDIS://LOCALHOST",
    ],
)
def test_key_value_stores_are_refused_with_advice(uri: str) -> None:
    """LlamaDeploy's key-value stores are refused, with the SQL URL to give instead."""
    with pytest.raises(ConfigError) as caught:
        state_store_url(uri)
    message = str(caught.value)
    assert "SQL" in message
    assert "postgresql+psycopg://" in message
    assert "leave state_store_uri out" in message


@pytest.mark.parametrize("uri", ["not a url", "://nowhere", "postgresql//missing-colon"])
def test_bad_urls_are_refused(uri: str) -> None:
    """Text that is no SQLAlchemy URL is refused, quoting it."""
    with pytest.raises(ConfigError, match="is not a SQLAlchemy database URL") as caught:
        state_store_url(uri)
    assert repr(uri) in str(caught.value)


# --- same_broker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("redis://localhost:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://localhost", "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379", "redis://localhost/"),
        ("redis://[::1]:6379/2", "redis://localhost/2"),
        ("redis://:pw@127.0.0.1/1", "redis://127.0.0.1:6379/1"),
        ("rediss://cache/3", "redis://cache:6379/3"),
        ("redis://Cache.Example/0", "redis://cache.example/0"),
        ("amqp://guest:guest@localhost//", "amqp://127.0.0.1:5672/"),
        ("amqp://localhost", "pyamqp://guest:guest@127.0.0.1:5672//"),
        ("amqps://mq/vh", "amqp://u:p@mq:5672/vh"),
        ("sqs://", "sqs://key:secret@"),
        ("memory://", "memory://localhost/"),
    ],
)
def test_same_broker(a: str, b: str) -> None:
    """Loopback names, default ports, default vhosts and db numbers, credentials: same broker."""
    assert same_broker(a, b)
    assert same_broker(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379"),
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1/0"),
        ("redis://cache/0", "redis://localhost/0"),
        ("amqp://localhost/vh", "amqp://localhost//"),
        ("amqp://localhost:5673//", "amqp://localhost//"),
        ("redis://localhost:6379/0", "amqp://localhost:6379/0"),
        ("sqs://", "redis://localhost"),
        ("memory://", "redis://localhost"),
        ("kafka://localhost:9092", "kafka://localhost:9092"),
    ],
)
def test_different_brokers(a: str, b: str) -> None:
    """Another host, port, vhost, db number or kind of broker is another broker."""
    assert not same_broker(a, b)
    assert not same_broker(b, a)


# --- same_database -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1/celeriac", "postgresql://u:p@localhost/celeriac"),
        ("postgresql+psycopg2://h:5433/db", "postgresql+psycopg://h:5433/db"),
        ("postgresql://db.example:5433/x", "postgresql+psycopg://me@db.example:5433/x"),
        ("sqlite:////tmp/a.db", "sqlite+pysqlite:////tmp/a.db"),
        # A URL without a port means the backend's default port.
        ("postgresql://localhost/celeriac", "postgresql://localhost:5432/celeriac"),
    ],
)
def test_same_database(a: str, b: str) -> None:
    """The driver, credentials and loopback name do not matter; backend, host, port and name do."""
    assert same_database(a, b)
    assert same_database(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("postgresql://localhost/celeriac", "postgresql://localhost/other"),
        ("postgresql://localhost:5433/celeriac", "postgresql://localhost/celeriac"),
        ("postgresql://db1/celeriac", "postgresql://db2/celeriac"),
        ("postgresql://localhost/celeriac", "mysql://localhost/celeriac"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/b.db"),
    ],
)
def test_different_databases(a: str, b: str) -> None:
    """Another database name, port, host or backend is another database."""
    assert not same_database(a, b)
    assert not same_database(b, a)


# --- mask ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:secret@mq:5672//", "amqp://guest:***@mq:5672//"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql+psycopg://me:s%40cret@db/celeriac", "postgresql+psycopg://me:***@db/celeriac"),
        ("sqs://AKIA:se%2Fcret@", "sqs://AKIA:***@"),
        ("amqp://guest:guest@mq//", "amqp://guest:***@mq//"),
    ],
)
def test_mask_hides_passwords(url: str, masked: str) -> None:
    """The password becomes ``***``; the user, host and path stay readable."""
    assert mask(url) == masked


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "amqp://guest@mq//", "sqs://", "memory://"]
)
def test_mask_leaves_urls_without_password(url: str) -> None:
    """A URL without a password is shown as it is."""
    assert mask(url) == url


# --- platform_mismatches -------------------------------------------------------------------------


def test_a_deployment_naming_nothing_fits_any_platform() -> None:
    """No message-queue and no state_store_uri: nothing to disagree about."""
    assert platform_mismatches(spec(), PLATFORM_BROKER, PLATFORM_DATABASE) == {}


def test_a_deployment_naming_the_platform_itself_fits() -> None:
    """The platform's own broker and database, spelled differently, are accepted."""
    deployment = spec(
        {"type": "redis", "host": "localhost", "port": 6379, "db": 0},
        "postgresql://postgres@localhost/celeriac",
    )
    assert platform_mismatches(deployment, PLATFORM_BROKER, PLATFORM_DATABASE) == {}


def test_another_broker_is_reported_with_passwords_masked() -> None:
    """A queue on another broker is reported at message-queue, naming both, secrets hidden."""
    deployment = spec({"type": "rabbitmq", "url": "amqp://guest:hunter2@mq:5672//"})
    errors = platform_mismatches(deployment, "redis://:topsecret@127.0.0.1/0", PLATFORM_DATABASE)
    assert list(errors) == ["message-queue"]
    reason = " ".join(errors["message-queue"])
    assert "amqp://guest:***@mq:5672//" in reason
    assert "redis://:***@127.0.0.1/0" in reason
    assert "hunter2" not in reason and "topsecret" not in reason


def test_an_unsupported_queue_type_is_reported_at_its_type() -> None:
    """A kafka queue is reported at message-queue.type."""
    errors = platform_mismatches(spec({"type": "kafka"}), PLATFORM_BROKER, PLATFORM_DATABASE)
    assert list(errors) == ["message-queue.type"]
    assert "kafka" in errors["message-queue.type"][0]


def test_state_store_problems_are_reported_at_state_store_uri() -> None:
    """A key-value store, or another database, is reported at control-plane.state_store_uri."""
    key_value = platform_mismatches(
        spec(state_store="redis://localhost:6379"), PLATFORM_BROKER, PLATFORM_DATABASE
    )
    assert list(key_value) == ["control-plane.state_store_uri"]
    assert "SQL" in key_value["control-plane.state_store_uri"][0]
    other = platform_mismatches(
        spec(state_store="postgresql://me:pw@127.0.0.1/elsewhere"),
        PLATFORM_BROKER,
        "postgresql+psycopg://postgres:dbsecret@127.0.0.1/celeriac",
    )
    assert list(other) == ["control-plane.state_store_uri"]
    reason = other["control-plane.state_store_uri"][0]
    assert "postgresql://me:***@127.0.0.1/elsewhere" in reason
    assert "dbsecret" not in reason and ":pw@" not in reason


def test_both_mismatches_are_reported_together() -> None:
    """A file wrong about both the broker and the store hears about both at once."""
    deployment = spec({"type": "solace"}, "mongodb://localhost")
    errors = platform_mismatches(deployment, PLATFORM_BROKER, PLATFORM_DATABASE)
    assert set(errors) == {"message-queue.type", "control-plane.state_store_uri"}
