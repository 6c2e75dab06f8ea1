"""A service worker's reports wait for a broker that is away, however long, and then arrive.

With a real Redis of the test's own that is not there yet when the report is sent: the
outcome of a run must not be lost (nor the run failed) because the broker took longer to come
back than Celery's connection timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from tests.support.processes import Processes, require_module
from tests.support.servers import PrivateRedis
from workers.celery_app import CeleryReporter, create_celery
from workers.protocol import CONTROL_QUEUE, STEP_FINISHED, StepFinished

#: Longer than Celery's ``broker_connection_timeout`` (4 s), which bounds Kombu's attempts to
#: open a connection for a channel.
AWAY = 8.0


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes of this test; every one is killed at teardown."""
    started = Processes(tmp_path / "logs")
    try:
        yield started
    finally:
        started.kill_all()


@pytest.mark.e2e
def test_an_outcome_sent_while_the_broker_is_away_for_long_is_delivered_when_it_returns(
    tmp_path: Path, processes: Processes
) -> None:
    # Given a worker's Celery app on a Redis that is not running (yet)
    require_module("redis")
    redis = PrivateRedis(processes, tmp_path / "redis")
    celery = create_celery(
        Settings(data_dir=tmp_path / ".celeriac", broker_url=redis.url), worker_name="w"
    )
    outcome = StepFinished(
        task_id="t1",
        ok=True,
        result="done",
        error=None,
        event_count=1,
        events=[],
        worker="w",
        started_at=time.time(),
        started_reported=False,
        at=time.time(),
    )
    errors: list[BaseException] = []

    def report() -> None:
        try:
            CeleryReporter(celery).finished(outcome)
        except Exception as exc:  # whatever escaped, the test shows it
            errors.append(exc)

    # When a run ends and reports its outcome, and the broker comes back only AWAY seconds
    # later
    sender = threading.Thread(target=report, daemon=True)
    sender.start()
    time.sleep(AWAY)
    redis.start()
    sender.join(timeout=30.0)

    # Then the report waited for the broker instead of raising, and is in its queue, once
    try:
        assert not sender.is_alive(), "the report still not sent 30 s after the broker came back"
        assert not errors, f"the report raised: {errors[0]!r}"
        client = redis.client()
        queued = [json.loads(m) for m in client.lrange(CONTROL_QUEUE, 0, -1)]
        client.close()
        assert [(m["headers"]["task"], m["headers"]["id"]) for m in queued] == [
            (STEP_FINISHED, outcome.id)
        ]
    finally:
        celery.close()
