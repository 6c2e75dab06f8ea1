"""Where a deployment file's ``message-queue`` and ``state_store_uri`` point, as Kombu and
SQLAlchemy URLs.

LlamaDeploy let each deployment name its own queue and state store. Celeriac runs every
deployment of one installation on the platform's broker and database: ``celeriac serve FILE``
adopts the file's settings when the environment names none, and a deployment created later
must agree with them (see :func:`platform_mismatches`).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.deployment import DeploymentSpec, MessageQueueSpec
from config.errors import ConfigError

#: LlamaDeploy queue types and the Kombu transport each one maps to.
TRANSPORT_OF_QUEUE = {"simple": None, "redis": "redis", "rabbitmq": "amqp", "aws": "sqs"}

_SCHEME_FAMILY = {
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
    "redis": "redis",
    "rediss": "redis",
    "sqs": "sqs",
    "memory": "memory",
}
_DEFAULT_PORT = {"amqp": 5672, "redis": 6379}
_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}


def broker_url(queue: MessageQueueSpec) -> str | None:
    """The Kombu URL a ``message-queue`` section names; None for ``simple`` (the platform's)."""
    options = queue.options
    if queue.type == "simple":
        return None
    if queue.type == "redis":
        if options.get("host"):
            scheme = "rediss" if options.get("ssl") else "redis"
            auth = _auth(options.get("username"), options.get("password"))
            port = options.get("port") or 6379
            return f"{scheme}://{auth}{options['host']}:{port}/{options.get('db') or 0}"
        return str(options["url"])
    if queue.type == "rabbitmq":
        if options.get("host") and options.get("username") and options.get("password"):
            scheme = "amqps" if options.get("secure") else "amqp"
            auth = _auth(options["username"], options["password"])
            port = options.get("port") or 5672
            return f"{scheme}://{auth}{options['host']}:{port}/{quote(options.get('vhost') or '')}"
        return str(options["url"])
    if queue.type == "aws":
        key, secret = options.get("aws_access_key_id"), options.get("aws_secret_access_key")
        return f"sqs://{_auth(key, secret)}" if key and secret else "sqs://"
    raise ConfigError(
        f"message queue type {queue.type!r} is not supported by Celeriac; "
        "use rabbitmq, redis or aws (SQS), or leave message-queue out"
    )


def state_store_url(uri: str | None) -> str | None:
    """The SQLAlchemy URL a ``state_store_uri`` names; None when it names none."""
    if not uri:
        return None
    scheme = urlsplit(uri).scheme.lower()
    if scheme in {"redis", "rediss", "unix", "mongodb", "mongodb+srv"}:
        raise ConfigError(
            f"{scheme}:// key-value state stores are not used by Celeriac, which keeps its state "
            "in a SQL database: give a SQLAlchemy URL such as "
            "postgresql+psycopg://user@host/celeriac, or leave state_store_uri out"
        )
    try:
        make_url(uri)
    except ArgumentError as exc:
        raise ConfigError(f"{uri!r} is not a SQLAlchemy database URL: {exc}") from exc
    return uri


def same_broker(a: str, b: str) -> bool:
    """True when two broker URLs name the same server (``localhost`` and ``127.0.0.1`` alike)."""
    first, second = urlsplit(a), urlsplit(b)
    family = _SCHEME_FAMILY.get(first.scheme)
    if family is None or family != _SCHEME_FAMILY.get(second.scheme):
        return False
    if family in {"memory", "sqs"}:
        return True
    return (
        _host(first.hostname) == _host(second.hostname)
        and (first.port or _DEFAULT_PORT[family]) == (second.port or _DEFAULT_PORT[family])
        and _path(first.path, family) == _path(second.path, family)
    )


def same_database(a: str, b: str) -> bool:
    """True when two SQLAlchemy URLs name the same database, whatever the driver."""
    first, second = make_url(a), make_url(b)
    return (
        first.get_backend_name() == second.get_backend_name()
        and _host(first.host) == _host(second.host)
        and _db_port(first.get_backend_name(), first.port)
        == _db_port(second.get_backend_name(), second.port)
        and first.database == second.database
    )


def mask(url: str) -> str:
    """A URL fit for messages and logs: the password replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def platform_mismatches(spec: DeploymentSpec, broker: str, database: str) -> dict[str, list[str]]:
    """Fields of ``spec`` that name a broker or database other than the platform's."""
    errors: dict[str, list[str]] = {}
    try:
        wanted = broker_url(spec.message_queue)
    except ConfigError as exc:
        errors["message-queue.type"] = [str(exc)]
    else:
        if wanted is not None and not same_broker(wanted, broker):
            errors["message-queue"] = [
                f"this Celeriac runs every deployment on its broker {mask(broker)}, not "
                f"{mask(wanted)}: leave message-queue out, or point it at that broker"
            ]
    try:
        store = state_store_url(spec.control_plane.state_store_uri)
    except ConfigError as exc:
        errors["control-plane.state_store_uri"] = [str(exc)]
    else:
        if store is not None and not same_database(store, database):
            errors["control-plane.state_store_uri"] = [
                f"this Celeriac keeps state in {mask(database)}, not {mask(store)}: "
                "leave state_store_uri out, or point it at that database"
            ]
    return errors


def _db_port(backend: str, port: int | None) -> int | None:
    return port or {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(backend)


def _auth(user: str | None, password: str | None) -> str:
    if not user and not password:
        return ""
    return f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"


def _host(host: str | None) -> str:
    host = (host or "").lower()
    return "localhost" if host in _LOOPBACK else host


def _path(path: str, family: str) -> str:
    path = path.strip("/")
    if family == "redis":
        return path or "0"
    return path or "/"  # RabbitMQ's default virtual host
