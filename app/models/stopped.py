"""Stopped steps: runs that no worker may start, whatever the broker still holds of them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class StoppedStep(Base):
    """A run of a task that was cancelled (or whose deployment was deleted) before it ended.

    Its step may still wait in a queue, or come back there (a redelivery), long after the
    control plane's broadcast that stopped it: every service worker reads this list when it
    connects to the broker (see ``workers.stops``), so the cancel outlives any restart,
    unlike Celery's ``revoke``. No key to ``tasks``: a deleted deployment's tasks are gone,
    and their steps must still never run. Rows are kept ``STOPS_KEPT`` (see
    ``app.control.lifecycle.stops``), then purged.
    """

    __tablename__ = "stopped_steps"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run: Mapped[int] = mapped_column(Integer, primary_key=True)
    stopped_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
