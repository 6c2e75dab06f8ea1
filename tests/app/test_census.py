"""The census behind ``/metrics``: histogram buckets and sums from known timestamps, on
SQLite (``tests/e2e/test_metrics.py`` runs the same on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import migrations
from app.control.census import DURATION_BUCKETS, QUEUE_WAIT_BUCKETS, CensusTaker
from app.control.registry import Registry
from app.db import Database
from tests.support.metrics import RUNS, assert_histogram, seed_runs


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'census.db'}"
    migrations.upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def test_runs_fall_in_the_buckets_their_timestamps_say(db: Database) -> None:
    # Given tasks whose waits and runs are known to the millisecond
    seed_runs(db)
    # When the census is read
    census = CensusTaker(db, Registry(db, heartbeat_interval=10.0)).census()
    # Then every started task is in the queue waits (a negative wait as 0), every ended
    # one in the durations, each in the bucket of its seconds, and the sums add up
    key = ("Timed", "svc")
    waits = [max(wait, 0.0) for wait, _, _ in RUNS]
    runs = [run for _, run, _ in RUNS if run is not None]
    assert_histogram(census.queue_waits[key], waits, QUEUE_WAIT_BUCKETS)
    assert_histogram(census.durations[key], runs, DURATION_BUCKETS)
    # And each status is counted, the queued task too
    assert census.tasks == {
        ("Timed", "svc", "succeeded"): 3,
        ("Timed", "svc", "failed"): 2,
        ("Timed", "svc", "running"): 1,
        ("Timed", "svc", "queued"): 1,
    }
    assert census.services == (key,)
    assert census.workers == {key: 0}
    assert census.events == {}
