"""The database: engine and sessions for one process, SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from config.datadir import private_sqlite
from config.settings import Settings

log = logging.getLogger(__name__)


class Database:
    """One engine and session factory; the service layer opens short units of work on it.

    A server database is waited for at most ``timeout`` seconds at a time: to connect, to
    take a connection from a full pool, and for each answer (a statement, a commit). Past
    that the caller gets an outage error (see :func:`is_outage`), as when the server refuses
    connections, so that no request hangs on a database that stopped answering.
    """

    def __init__(
        self, url: str, *, pool_size: int = 10, timeout: float = Settings.database_timeout
    ) -> None:
        self.url = url
        self._deadlines = Deadlines(timeout)
        self.engine = _make_engine(url, pool_size, timeout)
        # Single statements need no transaction: without one, a read is one round trip
        # instead of BEGIN, the query and the ROLLBACK that returns the connection. Its own
        # pool, so no connection switches mode per use. (SQLite reads are in-process, and
        # its in-memory database shares one connection.)
        self._autocommit = (
            self.engine
            if self.engine.dialect.name == "sqlite"
            else _make_engine(url, pool_size, timeout, isolation_level="AUTOCOMMIT")
        )
        if self.engine.dialect.name != "sqlite":
            for engine in (self.engine, self._autocommit):
                self._deadlines.watch(engine)
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
        return cls(
            settings.sqlalchemy_url, pool_size=threads + 2, timeout=settings.database_timeout
        )

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

    def insert_dialect(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT into ``table`` in the database's dialect (which has ``ON CONFLICT``)."""
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table)
        if dialect == "sqlite":
            return sqlite.insert(table)
        raise RuntimeError(f"unsupported database {dialect}")  # pragma: no cover

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """An INSERT into ``table`` that skips rows a unique key already has."""
        return self.insert_dialect(table).on_conflict_do_nothing()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self._deadlines.stop()
        self.engine.dispose()
        self._autocommit.dispose()


def is_outage(exc: DBAPIError) -> bool:
    """True for an error that says the database cannot be reached (it restarted, the network
    failed), as opposed to a statement it refused: the client may try again later."""
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


class Deadlines:
    """Cuts the connection of a statement (or commit, or rollback) that the server has not
    answered within ``seconds``: its caller then fails as on a lost connection.

    A database server that hangs (frozen, or its host overloaded) still has its kernel accept
    and acknowledge what clients send, so neither TCP timeouts nor the server's own
    ``statement_timeout`` end the wait, and drivers wait for ever. Each wait is noted when
    it begins and forgotten when it ends; a thread shuts down the socket of any wait that
    outlives its deadline. (A statement answered at the very moment its deadline passes
    may leave its connection cut: the next statement on it fails as lost, and the pool
    drops it.)
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._waits: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, engine: Engine) -> None:
        """Bound every wait for an answer on the connections of ``engine``."""
        event.listen(engine, "before_cursor_execute", self._statement_begins)
        event.listen(engine, "after_cursor_execute", self._statement_ends)
        event.listen(engine, "handle_error", self._statement_failed)
        event.listen(engine, "commit", self._transaction_ends)
        event.listen(engine, "rollback", self._transaction_ends)
        event.listen(engine.pool, "reset", self._reset_begins)
        for name in ("checkin", "close", "invalidate"):
            event.listen(engine.pool, name, self._released)

    def stop(self) -> None:
        """Stop the thread (at its next look); a wait that begins later starts another."""
        with self._lock:
            self._stopped.set()
            self._stopped, self._thread = threading.Event(), None

    def begin(self, dbapi_connection: Any) -> None:
        """A wait for the server begins on this connection (if it has one)."""
        if dbapi_connection is None:
            return
        deadline = time.monotonic() + self.seconds
        with self._lock:
            self._waits[id(dbapi_connection)] = (deadline, dbapi_connection)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._cut_overdue,
                    args=(self._stopped,),
                    name="celeriac-db-deadlines",
                    daemon=True,
                )
                self._thread.start()

    def end(self, dbapi_connection: Any) -> None:
        """The wait on this connection ended (answered, failed, or the connection is gone)."""
        if dbapi_connection is not None:
            with self._lock:
                self._waits.pop(id(dbapi_connection), None)

    def _statement_begins(self, conn: Connection, *_args: Any) -> None:
        self.begin(_dbapi(conn))

    def _statement_ends(self, conn: Connection, *_args: Any) -> None:
        self.end(_dbapi(conn))

    def _statement_failed(self, context: ExceptionContext) -> None:
        if context.connection is not None:
            self.end(_dbapi(context.connection))

    def _transaction_ends(self, conn: Connection) -> None:
        # Its wait ends when the connection is used again or goes back to the pool.
        self.begin(_dbapi(conn))

    def _reset_begins(self, dbapi_connection: Any, *_args: Any) -> None:
        self.begin(dbapi_connection)

    def _released(self, dbapi_connection: Any, *_args: Any) -> None:
        self.end(dbapi_connection)

    def _cut_overdue(self, stopped: threading.Event) -> None:
        period = min(max(self.seconds / 10, 0.05), 0.25)
        while not stopped.wait(period):
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._waits.items() if deadline <= now]
                for key in overdue:
                    _, dbapi_connection = self._waits.pop(key)
                    log.warning(
                        "the database did not answer within %g s: its connection is cut",
                        self.seconds,
                    )
                    _shut_down(dbapi_connection)


def _dbapi(conn: Connection) -> Any:
    """The driver's connection under ``conn``; None once it was lost (invalidated)."""
    return None if conn.invalidated or conn.closed else conn.connection.dbapi_connection


def _shut_down(dbapi_connection: Any) -> None:
    """Shut the connection's socket down both ways: a wait on it returns at once."""
    # A connection closed meanwhile raises its driver's own error, unknown here.
    with (
        contextlib.suppress(Exception),
        socket.socket(fileno=os.dup(dbapi_connection.fileno())) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)


def _make_engine(url: str, pool_size: int, timeout: float, **options: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # libpq's connect_timeout bounds connecting (2 s at least); an URL may set its own.
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = max(2, math.ceil(timeout))
        # A connection for every thread that may hold one at once, so that none is opened
        # and closed per request. No ping before each use (a round trip per checkout): a
        # connection found dead fails its statement, the pool then drops every connection
        # made before, and the caller's retry (control tasks) or the client's gets new ones.
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=10,
            pool_recycle=3600,
            pool_timeout=timeout,
            connect_args=connect_args,
            **options,
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
