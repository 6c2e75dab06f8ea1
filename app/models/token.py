"""API tokens: who may call the HTTP API, and what each token's scope lets it do."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class Scope(str, enum.Enum):
    """What a token may do. ``admin`` includes ``run``, which includes ``read``; ``worker`` is
    apart: it fetches deployment specs, with their ``env`` values, and nothing else."""

    ADMIN = "admin"
    RUN = "run"
    READ = "read"
    WORKER = "worker"


class ApiToken(Base):
    """One token. Only the SHA-256 of the token is kept: the token itself is shown once."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        # A name picks one live token; a revoked token's name may be used again.
        Index(
            "uq_api_tokens_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    scope: Mapped[str] = mapped_column(String(20))
    #: Hex SHA-256 of the whole token (tokens are random and long: no salt or slow hash needed).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Set by ``tokens revoke``; a revoked token is refused like an unknown one.
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the token was last accepted, to the minute (written at most once a minute).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
