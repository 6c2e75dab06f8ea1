"""A run's outcome waits for a broker away longer than Kombu's connect timeout (as a RabbitMQ
restart is: it takes seconds to start), on Redis and RabbitMQ. The faults every broker must
survive with a whole platform (a restart under load, a worker or the control-plane consumer
killed) are in ``test_broker_faults.py``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kombu import Connection

from config.settings import Settings
from tests.support.processes import READY_TIMEOUT
from tests.support.servers import PrivateBroker
from workers.celery_app import CeleryReporter, create_celery
from workers.protocol import CONTROL_QUEUE, STEP_FINISHED, StepFinished
from workers.transports import REDIS_TRANSPORT


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_report_waits_for_a_broker_away_longer_than_the_connect_timeout(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A run that ends while RabbitMQ restarts keeps its outcome until the broker takes it,
    however long past Kombu's connect timeout (which ends its own retries)."""
    # Given a worker's reporter on a broker of the test's own that is stopped
    broker: PrivateBroker = request.getfixturevalue(f"private_{kind}")
    celery = create_celery(Settings(broker_url=broker.url, data_dir=tmp_path))
    connect_timeout = float(celery.conf.broker_connection_timeout)
    broker.stop()

    # When a run reports its outcome, and the broker stays away past the connect timeout
    outcome = StepFinished(
        task_id="t-1",
        ok=True,
        result="done",
        error=None,
        event_count=1,
        events=[],
        worker="w1@e2e",
        started_at=time.time(),
        started_reported=False,
        at=time.time(),
    )
    errors: list[BaseException] = []

    def report() -> None:
        try:
            CeleryReporter(celery).finished(outcome)
        except BaseException as exc:  # the test shows whatever it raised
            errors.append(exc)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    reporter.join(timeout=connect_timeout + 3)
    waited = reporter.is_alive()
    broker.start()

    # Then the report waited instead of failing, and reaches the control plane's queue
    reporter.join(timeout=READY_TIMEOUT)
    assert not errors, errors
    assert waited, "the report returned while the broker was stopped"
    assert not reporter.is_alive(), "the report still waits after the broker came back"
    transport = REDIS_TRANSPORT if kind == "redis" else None
    with Connection(broker.url, transport=transport) as conn:
        message = celery.amqp.queues[CONTROL_QUEUE](conn.default_channel).get(no_ack=True)
    assert message is not None, "no report in the control plane's queue"
    assert (message.headers["task"], message.headers["id"]) == (STEP_FINISHED, outcome.id)
