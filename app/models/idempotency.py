"""Idempotency keys: the task a client's ``Idempotency-Key`` stored, and what it asked for."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class IdempotencyKey(Base):
    """A key a client sent with ``tasks/create`` or ``tasks/run`` on one deployment.

    The same key and request again, while the key lives, answer with ``task_id`` instead of
    storing another task; the key with another request is refused. The row is written in the
    transaction that stores its task (the task lifecycle's insert), so a key never names a
    task that is not there.
    """

    __tablename__ = "idempotency_keys"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: Hex SHA-256 of the request: its route, its parsed body and its session.
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    #: The key lives ``CELERIAC_IDEMPOTENCY_TTL`` seconds from then; expired rows are purged.
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
