"""The Celery app factory: one configured app per process, with the service task registered."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from config.settings import Settings
from config.sources import SourcePolicy
from workers import trust
from workers.description import describe_service, describe_workflow
from workers.durable import Journals
from workers.errors import ControlPlaneUnreachable, HandedBack, WorkflowFailed
from workers.heartbeat import HeartbeatStep
from workers.inbox import HandBackStep, InboxStep
from workers.pools import ThreadsPoolOnly
from workers.protocol import (
    CONTROL_QUEUE,
    DESCRIBE,
    JOURNAL_WANTED,
    JOURNAL_WRITTEN,
    RUN_STEP,
    SERVICE_DESCRIBED,
    STEP_EVENT,
    STEP_FINISHED,
    STEP_STARTED,
    DeliverEvent,
    Describe,
    JournalReplay,
    JournalWritten,
    Message,
    RunStep,
    ServiceDescribed,
    StepEvent,
    StepFinished,
    StepStarted,
    StopRuns,
)
from workers.runtime import ResultBounds, ServiceRuntime
from workers.stops import STOPS_ROUTING_KEY, stops_exchange
from workers.transports import BrokerConnection, transport_options
from workers.versions import Fetch, FetchVersion, LoadedService

log = logging.getLogger(__name__)


class CeleriacAMQP(AMQP):
    """Celery's broker plumbing, with Celeriac's connections (:class:`BrokerConnection`)."""

    Connection = BrokerConnection


class CeleriacCelery(Celery):
    """A Celery app that also carries Celeriac's settings and the service runtime."""

    amqp_cls = CeleriacAMQP
    settings: Settings
    runtime: ServiceRuntime


def create_celery(
    settings: Settings,
    *,
    worker_name: str | None = None,
    fetch: Fetch | None = None,
    fetch_version: FetchVersion | None = None,
    source_roots: tuple[Path, ...] = (),
) -> CeleriacCelery:
    """Build the Celery app for this process; nothing connects until a worker or sender runs.

    ``fetch`` lets service workers look up deployments they were not told about, and
    ``fetch_version`` the earlier versions that durable runs resume on;
    ``source_roots`` are folders the operator named for sources (a worker's ``--base-path``).
    """
    celery = CeleriacCelery("celeriac", set_as_current=False)
    celery.settings = settings

    def policy() -> SourcePolicy:
        return SourcePolicy.from_settings(
            settings, open_mode=trust.open_mode(settings), also=source_roots
        )

    celery.runtime = ServiceRuntime(
        settings.sources_dir,
        worker_name=worker_name,
        fetch=fetch,
        fetch_version=fetch_version,
        source_policy=policy,
        result_bounds=ResultBounds(settings.max_result_bytes, settings.max_nesting),
        release_after=settings.release_after,
    )
    celery.runtime.journals = Journals(
        lambda wanted: send(celery, JOURNAL_WANTED, wanted, CONTROL_QUEUE)
    )
    # Runs wait for the control plane's list of stopped runs (see ``InboxStep``).
    celery.runtime.stops.unknown()
    celery.conf.update(celery_config(settings))
    celery.steps["worker"].add(ThreadsPoolOnly)
    celery.steps["worker"].add(HeartbeatStep)
    celery.steps["worker"].add(HandBackStep)
    celery.steps["consumer"].add(InboxStep)
    register_service_tasks(celery)
    return celery


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that give at-least-once delivery and small JSON messages."""
    return {
        **transport_options(settings),
        # ``memory://`` has no host; naming one spares a warning from Kombu on every connect.
        "broker_url": "memory://localhost/" if settings.embedded else settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # A broker that goes away is waited for, however long (Celery gives up after 100
        # tries): every process reconnects by itself when it returns.
        "broker_connection_max_retries": None,
        # Celery's monitoring events cost a broker round trip each, several per task: on
        # when asked for. Flower (``enable_events``) turns workers' on while it watches.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # A task is acknowledged after it ran, and put back if its worker dies mid-run.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Workflow steps are long and uneven: one message in hand per worker slot.
        "worker_prefetch_multiplier": 1,
        # After a reconnection Celery lowers the prefetch count and raises it again from the
        # thread that acknowledges each task: with the threads pool, a pool thread then sends
        # ``basic.qos`` on the consumer's channel while the consumer's thread reads it. A
        # py-amqp connection serves one thread: two waiters for the same reply take each
        # other's, and the worker froze on RabbitMQ until the broker dropped the connection.
        # Without the reduction only the consumer's thread touches its channel; the cost: a
        # worker that reconnects takes its full prefetch at once, while runs of the lost
        # connection (whose steps RabbitMQ has put back) may still hold its threads.
        "worker_enable_prefetch_count_reduction": False,
        # Runs in progress when the connection is lost go on and report their outcome (the
        # threads pool cannot stop them anyway); RabbitMQ has put their steps back meanwhile.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Outcomes travel to the control plane as messages; no result backend is needed.
        "task_ignore_result": True,
        # Workflows share one asyncio loop per process and answer events sent to the task
        # they run: service workers use threads, so that loop and the task are in reach.
        "worker_pool": "threads",
        "task_default_queue": CONTROL_QUEUE,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }


#: How a run's reports are published: retried until the broker takes them, however long it is
#: away (Celery's default gives up after three tries within a second). A report lost with the
#: broker would leave its task ``running`` for good, and an error raised instead would fail a
#: run that went well; waiting holds one pool thread while the broker restarts, and Kombu
#: reconnects on each try (and :class:`CeleryReporter` past Kombu's connect timeout).
REPORT_RETRY_POLICY: dict[str, Any] = {
    "max_retries": None,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 2.0,
}


class CeleryReporter:
    """Sends a run's progress to the control plane's queue, by task name, waiting for the
    broker when it is away (:data:`REPORT_RETRY_POLICY`)."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery

    def started(self, message: StepStarted) -> None:
        """Tell the control plane a worker took the task."""
        self._send(STEP_STARTED, message)

    def event(self, message: StepEvent) -> None:
        """Forward one streamed event."""
        self._send(STEP_EVENT, message)

    def finished(self, message: StepFinished) -> None:
        """Report the outcome."""
        self._send(STEP_FINISHED, message)

    def journal(self, message: JournalWritten) -> None:
        """Send a durable run's journal."""
        self._send(JOURNAL_WRITTEN, message)

    def _send(self, name: str, message: Message) -> None:
        # Kombu's retry covers a connection lost while publishing, not a producer whose
        # channel it must first open again: that gives up after the connect timeout
        # (``broker_connection_timeout``, 4 s) with an OperationalError, which Kombu does not
        # retry. A broker away longer (a RabbitMQ restart takes more) is waited for here.
        pause = REPORT_RETRY_POLICY["interval_start"]
        while True:
            try:
                send(self._celery, name, message, CONTROL_QUEUE, retry_policy=REPORT_RETRY_POLICY)
                return
            except OperationalError as exc:
                log.warning("%s(%s) waits for the broker: %s", name, message.summary(), exc)
            time.sleep(pause)
            pause = min(
                pause + REPORT_RETRY_POLICY["interval_step"], REPORT_RETRY_POLICY["interval_max"]
            )


def send(
    celery: Celery,
    name: str,
    message: Message,
    queue: str,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """Publish a message as the task ``name`` on ``queue``, with a readable summary
    (retried as ``retry_policy`` says, or as Celery's ``task_publish_retry_policy``)."""
    celery.send_task(
        name,
        kwargs=message.encode(),
        queue=queue,
        task_id=message.id,
        # Celery would otherwise build a repr of the arguments for every message: costly.
        argsrepr="()",
        kwargsrepr=message.summary(),
        retry_policy=retry_policy,
    )


def register_service_tasks(celery: CeleriacCelery) -> None:
    """Register the task that service workers run: decode, run the workflow, report."""
    reporter = CeleryReporter(celery)

    def announce(deployment: str, service: str, version: int, loaded: LoadedService) -> None:
        try:
            description = describe_workflow(loaded.workflow)
            answer = ServiceDescribed(
                deployment=deployment, service=service, version=version, description=description
            )
            send(celery, SERVICE_DESCRIBED, answer, CONTROL_QUEUE)
        except Exception:
            # The control plane asks a worker when it needs a description it lacks.
            log.warning("could not announce the workflow of %s/%s", deployment, service)

    celery.runtime.announce = announce

    @celery.task(
        name=RUN_STEP,
        shared=False,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        # Expected: logged as the task's state, without a traceback (the task's error has it).
        throws=(WorkflowFailed,),
    )
    def run_step(task: Any, **payload: Any) -> None:
        try:
            outcome = celery.runtime.run(
                RunStep.decode(payload), reporter, redelivered=redelivered(task)
            )
        except ControlPlaneUnreachable as exc:
            # The deployment could not be fetched (the API server restarts, say): the step
            # goes back to the queue for a moment later, instead of failing the task.
            raise task.retry(exc=exc, countdown=2, max_retries=300) from exc
        except HandedBack as exc:
            # Back to the queue (not acknowledged): another worker runs it again.
            raise Reject(str(exc), requeue=True) from None
        if outcome is not None and not outcome.ok:
            error = outcome.error or {}
            raise WorkflowFailed(f"{error.get('type', 'Error')}: {error.get('message', '')}")

    def redelivered(task: Any) -> bool:
        # The broker put the message back (its worker was lost, or it was handed back):
        # RabbitMQ says so, and Kombu's Redis and memory transports mark what they restore.
        # SQS marks nothing: every delivery there counts as a redelivery.
        info = task.request.delivery_info or {}
        return bool(info.get("redelivered")) or celery.settings.transport == "sqs"

    @celery.task(name=DESCRIBE, shared=False, bind=True, acks_late=True)
    def describe(task: Any, **payload: Any) -> None:
        try:
            answer = describe_service(celery.runtime, Describe.decode(payload))
        except ControlPlaneUnreachable as exc:
            raise task.retry(exc=exc, countdown=2, max_retries=30) from exc
        send(celery, SERVICE_DESCRIBED, answer, CONTROL_QUEUE)


def send_to_inbox(
    celery: Celery, inbox: str, message: DeliverEvent | StopRuns | JournalReplay
) -> None:
    """Publish an event for a task to the inbox of the worker that runs it (a plain Kombu
    message: the worker handles it in its consumer thread, see ``InboxStep``).

    Nothing is declared: the worker owns its inbox, and a sender that declared one would bring
    back the inbox of a worker that is gone, with nobody to consume or delete it."""
    with celery.producer_or_acquire() as producer:
        producer.publish(
            message.encode(), exchange="", routing_key=inbox, serializer="json", retry=True
        )


def broadcast_stops(celery: Celery, message: StopRuns) -> None:
    """Publish stopped runs to every service worker's inbox, through the stops exchange
    (declared here too: on RabbitMQ a publish to an exchange never declared is an error)."""
    exchange = stops_exchange()
    with celery.producer_or_acquire() as producer:
        producer.publish(
            message.encode(),
            exchange=exchange,
            routing_key=STOPS_ROUTING_KEY,
            declare=[exchange],
            serializer="json",
            retry=True,
        )
