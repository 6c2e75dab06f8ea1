"""Prometheus metrics as a test reads them: parsed with Prometheus's own parser."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from app.control.census import Histogram
from app.db import Database
from app.models import Deployment, Service, Task
from app.models.base import utcnow

#: A sample's name and labels, as a key.
Key = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    """One scrape of ``/metrics``, parsed with Prometheus's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"sample twice: {key}"
                self.samples[key] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The value of one sample (it must be there)."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}"
        return self.samples[key]

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        """The value of one sample, or ``default`` if it is not there."""
        return self.samples.get((name, frozenset(labels.items())), default)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        """The label sets of a sample name."""
        return [dict(labels) for sample, labels in self.samples if sample == name]


#: Seconds each seeded task waited before its run, and ran (None: still running), and its
#: status. A run stamped before its dispatch (hosts' clocks differ) waited 0.
RUNS: list[tuple[float, float | None, str]] = [
    (0.003, 0.02, "succeeded"),
    (0.3, 0.7, "failed"),
    (20.0, 42.0, "succeeded"),
    (1000.0, 5000.0, "failed"),
    (0.04, None, "running"),
    (-2.0, 0.2, "succeeded"),
]


def seed_runs(db: Database) -> None:
    """Deployment ``Timed`` (service ``svc``) with a task per :data:`RUNS`, and one queued."""
    now = utcnow()
    with db.begin() as session:
        deployment = Deployment(name="Timed", spec={}, source_yaml="", base_path="")
        session.add(deployment)
        session.flush()
        session.add(
            Service(deployment_id=deployment.id, name="svc", display_name="svc", queue="q.svc")
        )
        for wait, run, status in RUNS:
            dispatched = now - dt.timedelta(hours=2)
            started = dispatched + dt.timedelta(seconds=wait)
            finished = None if run is None else started + dt.timedelta(seconds=run)
            session.add(
                Task(
                    deployment_id=deployment.id,
                    service="svc",
                    input={},
                    status=status,
                    created_at=dispatched - dt.timedelta(minutes=5),
                    dispatched_at=dispatched,
                    started_at=started,
                    finished_at=finished,
                )
            )
        session.add(Task(deployment_id=deployment.id, service="svc", input={}, status="queued"))


def assert_histogram(histogram: Histogram, seen: list[float], bounds: tuple[float, ...]) -> None:
    """``histogram`` holds exactly the observations ``seen`` (sums to the millisecond)."""
    assert histogram.bounds == bounds
    assert histogram.at_most == tuple(sum(value <= bound for value in seen) for bound in bounds)
    assert histogram.count == len(seen)
    assert abs(histogram.total - sum(seen)) < 0.01, (histogram.total, sum(seen))
