"""API tokens: create, list and revoke them, and verify the token a request carries.

A token is ``clr_`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only
its SHA-256 is stored: a token that random needs no salt or slow hash, and a request's token is
found by its hash alone (an index lookup, no secret compared byte by byte in Python).

What a process read of the tokens it trusts for :data:`CACHE_SECONDS`: reading them on every
request cost a database round trip per request (a tenth of a ``tasks/run`` on SQLite, more on
PostgreSQL). Changes made in this process apply at once; a token revoked, or the first one
made, by another process (``celeriac tokens``) applies within that time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.errors import Conflict, InvalidInput, NotFound
from app.models import ApiToken, Scope
from app.models.base import table_of, utcnow

PREFIX = "clr_"
#: ``last_used_at`` is written at most this often per token: a write per request would cost
#: every request a database write.
TOUCH_EVERY = dt.timedelta(seconds=60)
#: Longer than any token this module makes; anything longer is refused unread.
_MAX_LENGTH = 100
#: Seconds a process trusts a live token, and whether any token is live, without reading again.
CACHE_SECONDS = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOKENS = table_of(ApiToken)


@dataclass(frozen=True)
class TokenInfo:
    """What is known of a token, never the token itself."""

    id: int
    name: str | None
    scope: Scope
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


@dataclass(frozen=True)
class NewToken:
    """A token just made: ``token`` is shown to its creator once, and stored nowhere."""

    info: TokenInfo
    token: str = field(repr=False)


def digest(token: str) -> str:
    """The stored form of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The API tokens of an installation, in its database."""

    def __init__(self, db: Database, cache_seconds: float = CACHE_SECONDS) -> None:
        self._db = db
        self._ttl = cache_seconds
        #: Hash of a live token to its scope and the monotonic time until which it is trusted.
        self._known: dict[str, tuple[Scope, float]] = {}
        #: Whether a live token exists, and until when that is trusted.
        self._live: tuple[bool, float] = (False, 0.0)

    def _forget(self) -> None:
        """Read everything afresh (after a change made in this process)."""
        self._known = {}
        self._live = (False, 0.0)

    def create(self, scope: Scope | str, name: str | None = None) -> NewToken:
        """Make a token of ``scope``; ``name`` (optional) must not be taken by a live token."""
        scope = _scope(scope)
        if name is not None:
            _check_name(name)
        token = PREFIX + secrets.token_urlsafe(32)
        row = ApiToken(name=name, scope=scope.value, token_hash=digest(token), created_at=utcnow())
        try:
            with self._db.begin() as session:
                session.add(row)
            self._forget()
        except IntegrityError as exc:
            raise Conflict(
                f"a live token is named {name!r}; revoke it first or pick another name",
                errors={"name": ["taken by a live token"]},
            ) from exc
        return NewToken(_info(row), token)

    def all(self) -> list[TokenInfo]:
        """Every token, revoked ones too, oldest first."""
        with self._db.read() as session:
            return [_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.id))]

    def revoke(self, ref: str) -> TokenInfo:
        """Revoke the token with this id (digits) or the live token with this name."""
        with self._db.begin() as session:
            query = select(ApiToken)
            if ref.isdigit():
                query = query.where(ApiToken.id == int(ref))
            else:
                query = query.where(ApiToken.name == ref, ApiToken.revoked_at.is_(None))
            row = session.scalar(query)
            if row is None:
                raise NotFound(f"no token with id or live name {ref!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            info = _info(row)
        self._forget()
        return info

    def any_live(self) -> bool:
        """True once a token exists that is not revoked: then every request needs one."""
        live, until = self._live
        now = time.monotonic()
        if now < until:
            return live
        query = select(_TOKENS.c.id).where(_TOKENS.c.revoked_at.is_(None)).limit(1)
        with self._db.peek() as conn:
            live = conn.execute(query).first() is not None
        self._live = (live, now + self._ttl)
        return live

    def verify(self, token: str) -> Scope | None:
        """The scope of a live token, or None for anything else (unknown, revoked, garbled:
        the caller is told nothing more)."""
        if not token.startswith(PREFIX) or len(token) > _MAX_LENGTH:
            return None
        hashed = digest(token)
        known = self._known.get(hashed)
        moment = time.monotonic()
        if known is not None and moment < known[1]:
            return known[0]
        query = select(_TOKENS.c.id, _TOKENS.c.scope, _TOKENS.c.last_used_at).where(
            _TOKENS.c.token_hash == hashed, _TOKENS.c.revoked_at.is_(None)
        )
        with self._db.peek() as conn:
            row = conn.execute(query).first()
        if row is None:
            self._known.pop(hashed, None)  # unknown tokens are not kept: no memory to fill
            return None
        scope = Scope(row.scope)
        self._known[hashed] = (scope, moment + self._ttl)
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
            self._touch(row.id, now)
        return scope

    def _touch(self, token_id: int, now: dt.datetime) -> None:
        """Note that a token was used (once a minute at most, whoever else notes it too)."""
        statement = (
            update(_TOKENS)
            .where(
                _TOKENS.c.id == token_id,
                or_(
                    _TOKENS.c.last_used_at.is_(None),
                    _TOKENS.c.last_used_at <= now - TOUCH_EVERY,
                ),
            )
            .values(last_used_at=now)
        )
        with self._db.single() as conn:
            conn.execute(statement)


def _scope(value: Scope | str) -> Scope:
    try:
        return Scope(value)
    except ValueError as exc:
        choices = ", ".join(s.value for s in Scope)
        raise InvalidInput(
            f"unknown scope {value!r}; choose one of {choices}",
            errors={"scope": [f"one of {choices}"]},
        ) from exc


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.isdigit():
        raise InvalidInput(
            f"invalid token name {name!r}",
            errors={
                "name": [
                    "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or "
                    "digit, and not digits only (those are ids)"
                ]
            },
        )


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        scope=Scope(row.scope),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
