"""The database: engine and sessions for one process, SQLite or PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from config.datadir import private_sqlite
from config.settings import Settings


class Database:
    """One engine and session factory; the service layer opens short units of work on it."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = _make_engine(url, pool_size)
        # Single statements need no transaction: without one, a read is one round trip
        # instead of BEGIN, the query and the ROLLBACK that returns the connection. Its own
        # pool, so no connection switches mode per use. (SQLite reads are in-process, and
        # its in-memory database shares one connection.)
        self._autocommit = (
            self.engine
            if self.engine.dialect.name == "sqlite"
            else _make_engine(url, pool_size, isolation_level="AUTOCOMMIT")
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time and makes the others sleep and retry; taking turns
        # on a lock in this process is much faster than its busy-wait backoff.
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The database of these settings, pooled for the threads of any of its processes
        (HTTP threads in the API server, pool threads in the control-plane consumer)."""
        threads = max(settings.http_threads, settings.worker_concurrency)
        return cls(settings.sqlalchemy_url, pool_size=threads + 2)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction that commits on success and rolls back on error."""
        with self._write_lock, self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def peek(self) -> Iterator[Connection]:
        """A Core connection outside any transaction, for single-statement reads on hot
        paths (several statements in it would not see one snapshot)."""
        with self._autocommit.connect() as connection:
            yield connection

    @contextmanager
    def single(self) -> Iterator[Connection]:
        """A Core connection for one writing statement, which commits on its own: no BEGIN
        and COMMIT round trips on PostgreSQL. Statements in it are not atomic together."""
        if self._autocommit is self.engine:  # SQLite: its writers still take turns
            with self.connect() as connection:
                yield connection
        else:
            with self._autocommit.connect() as connection:
                yield connection

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core connection in a transaction (for hot paths that skip the ORM)."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """An INSERT into ``table`` that skips rows a unique key already has."""
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        raise RuntimeError(f"unsupported database {dialect}")  # pragma: no cover

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        self._autocommit.dispose()


def is_outage(exc: DBAPIError) -> bool:
    """True for an error that says the database cannot be reached (it restarted, the network
    failed), as opposed to a statement it refused: the client may try again later."""
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


def _make_engine(url: str, pool_size: int, **options: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A connection for every thread that may hold one at once, so that none is opened
        # and closed per request. No ping before each use (a round trip per checkout): a
        # connection found dead fails its statement, the pool then drops every connection
        # made before, and the caller's retry (control tasks) or the client's gets new ones.
        return create_engine(
            url, pool_size=pool_size, max_overflow=10, pool_recycle=3600, **options
        )
    database = parsed.database or ""
    if database in ("", ":memory:"):
        # One shared connection, or every thread would see its own empty database.
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    else:
        private_sqlite(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers and the one writer work at once; NORMAL sync is safe with WAL.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine
