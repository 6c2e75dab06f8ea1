"""The control plane of one process: its database, Celery app and services, wired once."""

from __future__ import annotations

from app.control.census import CensusTaker
from app.control.deadlines import Deadlines
from app.control.deployments import Deployments
from app.control.descriptions import Descriptions
from app.control.dispatch import Dispatcher
from app.control.events import EventLog
from app.control.handlers import Handlers
from app.control.journal import Journal
from app.control.leases import Leases
from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.control.overview import Overview
from app.control.readiness import Readiness
from app.control.recorder import Recorder
from app.control.registry import Registry
from app.control.sendable import SendableEvents
from app.control.sessions import Sessions
from app.control.stops import Stops
from app.control.tasks import Tasks
from app.control.timelines import Timelines
from app.control.tokens import Tokens
from app.control.versions import Versions
from app.control.waiter import TaskWaiter
from app.db import Database
from app.orchestrator import register_control_tasks
from app.trust import open_mode
from config.settings import Settings
from workers.celery_app import CeleriacCelery


class ControlPlane:
    """Everything the API and the control-plane consumer share inside one process."""

    def __init__(self, settings: Settings, db: Database, celery: CeleriacCelery) -> None:
        self.settings = settings
        self.db = db
        self.celery = celery
        # In the embedded mode the recorder runs here and always notifies: polling the
        # database is only a safety net. Elsewhere it is how waiters learn about outcomes,
        # unless a Listener relays the recorder's notifications (``TaskWaiter.set_relayed``).
        self.waiter = TaskWaiter(first_poll=0.5) if settings.embedded else TaskWaiter()
        dispatcher = Dispatcher(celery)
        self.lifecycle = Lifecycle(db, key_lifetime=settings.idempotency_ttl)
        self.outbox = Outbox(
            self.lifecycle, dispatcher, settings.redispatch_after, swept=not settings.embedded
        )
        self.stops = Stops(self.lifecycle, dispatcher, self.outbox, self.waiter)
        self.deadlines = Deadlines(self.lifecycle, self.outbox, self.stops)
        self.journal = Journal(db, dispatcher)
        self.recorder = Recorder(
            db, self.lifecycle, self.waiter, dispatcher, self.outbox, self.deadlines, self.journal
        )
        self.leases = Leases(self.lifecycle, dispatcher, settings.heartbeat_interval)
        self.tokens = Tokens(db)
        self.deployments = Deployments(db, settings, lambda: open_mode(settings, self.tokens))
        # This process's own workers (the embedded mode) take sources where deploys may.
        celery.runtime.source_policy = self.deployments.source_policy
        self.versions = Versions(db)
        self.sessions = Sessions(db, self.lifecycle)
        self.registry = Registry(db, settings.heartbeat_interval)
        self.census = CensusTaker(db, self.registry)
        self.readiness = Readiness(db, celery)
        self.overview = Overview(db, self.registry)
        self.tasks = Tasks(
            db,
            self.lifecycle,
            self.outbox,
            self.waiter,
            self.stops,
            settings.run_timeout,
            max_input_bytes=settings.max_input_bytes,
            max_nesting=settings.max_nesting,
        )
        self.timelines = Timelines(db, self.tasks)
        self.deployments.on_deployed.append(
            lambda spec, _base, _version: self.tasks.forget(spec.name)
        )
        self.deployments.on_removed.append(self.tasks.forget)
        self.deployments.before_delete.append(
            lambda deployment_id: self.stops.broadcast(
                self.lifecycle.cancel_all(deployment_id), "cancelled"
            )
        )
        # Streams wake on the recorder's notifications when it runs in this process; else
        # they re-read the database this often.
        poll = 1.0 if settings.embedded else 0.1
        # Its own waiter: description keys must never meet a task id a client chose.
        self.descriptions = Descriptions(db, dispatcher, TaskWaiter())
        self.events = EventLog(
            db,
            self.lifecycle,
            self.tasks,
            self.waiter,
            dispatcher,
            self.outbox,
            SendableEvents(self.descriptions),
            poll=poll,
            max_event_bytes=settings.max_event_bytes,
            max_nesting=settings.max_nesting,
        )
        self.handlers = Handlers(db, self.tasks)
        register_control_tasks(
            celery,
            self.recorder,
            self.outbox,
            self.leases,
            self.descriptions,
            self.stops,
            self.deadlines,
            self.journal,
        )

    def close(self) -> None:
        """Write the last notes of published tasks, then release connections."""
        self.outbox.close()
        self.db.dispose()
