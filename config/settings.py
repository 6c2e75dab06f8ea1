"""Runtime settings: one frozen object, built from ``CELERIAC_*`` variables by entry points only."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from config.errors import ConfigError

MEMORY_BROKER = "memory://"


@dataclass(frozen=True)
class Settings:
    """Everything a Celeriac process needs to know about its surroundings."""

    data_dir: Path = Path(".celeriac")
    #: SQLAlchemy URL; empty means SQLite in ``data_dir``.
    database_url: str = ""
    broker_url: str = MEMORY_BROKER
    host: str = "127.0.0.1"
    port: int = 4501
    #: How long ``tasks/run`` waits for a task before answering 504 (the task keeps running).
    run_timeout: float = 120.0
    max_deployments: int = 100
    #: Seconds between polls of an idle virtual transport (``memory://``): a latency floor.
    polling_interval: float = 0.002
    #: Threads of each in-process worker in the embedded mode.
    worker_concurrency: int = 8
    #: Threads of the WSGI server.
    http_threads: int = 32
    #: Seconds a process waits for a server database at a time (to connect, for a pooled
    #: connection, for each answer) before it takes it for unavailable (503 in the API).
    database_timeout: float = 5.0
    log_level: str = "WARNING"
    #: The API server that distributed workers fetch deployments from (``CELERIAC_SERVER``).
    server: str = "http://127.0.0.1:4501"
    #: Seconds between worker heartbeats; a worker silent for three of them is gone.
    heartbeat_interval: float = 10.0
    #: Seconds a durable run waits for input before it is let go (parked): the task keeps
    #: waiting with no worker thread, and the answer resumes it on any worker.
    release_after: float = 30.0
    #: A task whose step has not been seen to reach the broker this many seconds after it was
    #: dispatched (its sender died in between) is sent again by the control-plane consumer.
    redispatch_after: float = 30.0
    #: Redis and SQS redeliver a message unacknowledged for this long: the longest a task may
    #: run before a second worker starts it too (SQS allows at most 43200).
    visibility_timeout: int = 43200
    #: AWS region of the SQS broker.
    sqs_region: str = "us-east-1"
    #: Whether workers send Celery's task events from the start (``-E``) and senders the
    #: ``task-sent`` event. Each costs a broker round trip per task; Flower switches worker
    #: events on by itself while it runs, so they are off unless asked for.
    task_events: bool = False
    #: Folders that local deployment sources must lie in, ``:``-separated. Empty: on a loopback
    #: server without tokens, any folder; otherwise the data folder and the folder the process
    #: was started in (see ``config.sources``).
    source_roots: str = ""
    #: URL schemes that git sources may use, comma-separated (``https``, ``ssh``, ``http``,
    #: ``git``, ``file``); never git's command-running ``ext``.
    git_schemes: str = "https"
    #: Largest deployment file accepted, in bytes.
    max_yaml_bytes: int = 1_048_576
    #: Most nodes a deployment file may hold once its aliases are expanded (billion laughs).
    max_yaml_nodes: int = 10_000
    #: Largest task input, as compact JSON bytes.
    max_input_bytes: int = 1_048_576
    #: Largest event sent into a task, as JSON bytes.
    max_event_bytes: int = 262_144
    #: Largest result a task may store, as compact JSON bytes; a bigger one fails the task.
    max_result_bytes: int = 1_048_576
    #: Deepest nesting of arrays and objects in JSON and YAML that clients and workflows send.
    max_nesting: int = 100
    #: Seconds an ``Idempotency-Key`` of ``tasks/create`` and ``tasks/run`` names its task;
    #: past them, the key is free for a new request.
    idempotency_ttl: float = 86400.0
    #: The API token that clients and service workers send (``CELERIAC_TOKEN``); never shown.
    token: str = field(default="", repr=False)
    #: Serve an address other than loopback with no API token: anyone who reaches the port
    #: may deploy and run code. Off unless the operator says so, loudly.
    insecure_no_auth: bool = False
    #: Web origins (``scheme://host[:port]``, separated by commas or spaces) whose pages may
    #: call the API from a browser (CORS); none by default.
    cors_origins: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when the broker lives inside this process, so every worker must run here too."""
        return self.broker_url.startswith("memory://")

    @property
    def transport(self) -> str:
        """The broker's kind: ``memory``, ``amqp``, ``redis`` or ``sqs``."""
        scheme = self.broker_url.split("://", 1)[0].lower()
        return {"pyamqp": "amqp", "amqps": "amqp", "rediss": "redis"}.get(scheme, scheme)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'celeriac.db').resolve()}"

    @property
    def shown_database_url(self) -> str:
        """:attr:`sqlalchemy_url` as printed: its password replaced by ``***``."""
        return without_password(self.sqlalchemy_url)

    @property
    def shown_broker_url(self) -> str:
        """The broker URL as printed: its password replaced by ``***``."""
        return without_password(self.broker_url)

    @property
    def max_request_bytes(self) -> int:
        """The largest request body read at all (413 past it): twice the largest payload
        limit, since JSON sent inside a JSON string is escaped, plus room for the envelope."""
        largest = max(self.max_yaml_bytes, self.max_input_bytes, self.max_event_bytes)
        return 2 * largest + 65_536

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """The origins of ``cors_origins``, without trailing slashes."""
        parts = self.cors_origins.replace(",", " ").split()
        return tuple(p.rstrip("/") for p in parts)

    @property
    def loopback(self) -> bool:
        """True when the server listens on a loopback address only (this host's own users)."""
        return is_loopback(self.host)

    @property
    def sources_dir(self) -> Path:
        """Where git sources of deployments are cloned."""
        return self.data_dir / "sources"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (settings are frozen)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``CELERIAC_*`` variables; called by entry points, never at import."""
        defaults = cls()
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(f"CELERIAC_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw, getattr(defaults, f.name))
        return cls(**values)  # type: ignore[arg-type]


#: The password of a URL's user part: ``scheme://user:PASSWORD@``.
_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/\s]*@")


def without_password(url: str) -> str:
    """``url`` with the password of its user part, if any, replaced by ``***``."""
    return _PASSWORD.sub(r"\1:***@", url, count=1)


def is_loopback(host: str) -> bool:
    """True for a name or address of this host's loopback interface (``127.0.0.0/8``, ``::1``,
    ``localhost`` and its subdomains); a name that needs a resolver is not taken as one."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _coerce(name: str, raw: str, default: object) -> object:
    """Turn one environment string into the type of the field's default."""
    try:
        if isinstance(default, bool):
            return _BOOLEANS[raw.strip().lower()]
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except KeyError as exc:
        raise ConfigError(
            f"CELERIAC_{name.upper()}: {raw!r} is not a yes or no (use true or false)"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"CELERIAC_{name.upper()}: {raw!r} is not a valid number") from exc
    if isinstance(default, Path):
        return Path(raw)
    return raw
