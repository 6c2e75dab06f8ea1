"""Broker faults on Redis and on RabbitMQ, with real processes: a private broker (Redis with its
append-only file, RabbitMQ with its durable queues, as the README asks), a fresh PostgreSQL
database, an API server, the control-plane consumer and two service workers. Each batch must
end with every task finished, recorded once, and run at least once, counted by the workflow
itself in a file of its own (one line per run); a task may run twice only where the broker's
delivery says so, and the README tells."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.batches import Runs, assert_batch_complete, start, submit, unfinished
from tests.e2e.conftest import Platform, node
from tests.support.processes import READY_TIMEOUT, poll
from tests.support.servers import PrivateBroker
from workers.transports import RECONNECT_INTERVAL_MAX

#: Service workers of each platform, and the threads of each.
WORKERS = 2
CONCURRENCY = 4
#: How long each task of the restart batch runs.
SECONDS = 0.3
#: What a busy 2-core machine may add to the time a batch takes after the broker's return
#: (the processes' reconnection and start of consuming, the control plane catching up).
RECOVERY_SLACK = 6.0
#: The visibility timeout of the Redis platforms: short, so that redeliveries show in a test.
VISIBILITY_TIMEOUT = 8
#: The README's bound on Redis: a lost worker's message is redelivered within the visibility
#: timeout plus this many seconds.
REDELIVERY_SLACK = 10.0
#: How long each task of the worker-kill batch runs.
KILL_SECONDS = 1.0
#: RabbitMQ redelivers a killed worker's messages at once (the kernel closes its connection);
#: they wait only for a free slot on the other worker, whose tasks take a second each.
RABBITMQ_REDELIVERY = 4.0


@dataclass(frozen=True)
class Broker:
    """A private broker under test, and what the README promises of it."""

    server: PrivateBroker
    #: How long a killed worker's tasks may take to start again on another worker.
    redelivery_bound: float
    #: How many runs a broker restart may repeat per worker slot: the steps whose
    #: acknowledgement went with the connection (RabbitMQ puts them back), none on Redis.
    repeats_per_slot: int
    #: Settings of every process of the platform.
    settings: dict[str, str] = field(default_factory=dict)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """A started private broker of each kind, in turn."""
    if request.param == "redis":
        return Broker(
            request.getfixturevalue("private_redis"),
            redelivery_bound=VISIBILITY_TIMEOUT + REDELIVERY_SLACK,
            repeats_per_slot=0,
            settings={"CELERIAC_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)},
        )
    return Broker(
        request.getfixturevalue("private_rabbitmq"),
        redelivery_bound=RABBITMQ_REDELIVERY,
        repeats_per_slot=1,
    )


@pytest.fixture
def platform(broker: Broker, make_platform: Callable[[str], Platform]) -> Platform:
    """A distributed platform on the private broker."""
    made = make_platform(broker.server.url)
    made.settings |= broker.settings
    return made


@pytest.mark.e2e
@pytest.mark.slow
def test_a_broker_restart_under_load_loses_no_outcome_and_every_process_reconnects(
    platform: Platform, broker: Broker, counted: Path, tmp_path: Path
) -> None:
    """The broker stops for a few seconds while a 100-task batch runs; runs that end meanwhile
    wait for it to report their outcome, every process reconnects by itself, and the batch
    ends promptly once the broker is back."""
    # Given two service workers and a batch of 100 tasks in flight
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted, workers=WORKERS, concurrency=CONCURRENCY)
    ids = submit(platform, runs, 100, seconds=SECONDS)
    poll(lambda: len(runs.read()), lambda n: n >= 40, 30, "the batch under way")

    # When the broker stops while tasks run, and starts again 3 s later
    stopped_at = time.time()
    broker.server.stop()
    down = unfinished(platform, ids)
    time.sleep(3)
    broker.server.start()
    back_at = time.time()

    # Then the whole batch ends: each task recorded once, none lost, none failed
    assert down > 0, "the batch ended before the broker stopped: too quick"
    twice = assert_batch_complete(platform, ids, runs)
    recovered_in = time.time() - back_at
    # And promptly: no process froze or waited long to reconnect; the rest of the batch ran
    # as soon as the workers were back
    work = down * SECONDS / (WORKERS * CONCURRENCY)
    assert recovered_in <= RECONNECT_INTERVAL_MAX + work + RECOVERY_SLACK, (
        f"the batch ended {recovered_in:.1f} s after the broker came back; its {down} "
        f"unfinished tasks take {work:.1f} s"
    )
    # And a run was repeated only where the broker put back a step whose acknowledgement was
    # lost with its connection: at most one per worker slot, run once before the stop and
    # once after the broker's return
    assert len(twice) <= broker.repeats_per_slot * WORKERS * CONCURRENCY, twice
    every = runs.read()
    for n in twice:
        first, second = sorted(at for at, _ in every[n])
        assert first < stopped_at and second > back_at, (n, every[n], stopped_at, back_at)
    # And every process reconnected by itself: a second batch goes through all of them
    more = submit(platform, runs, 20, seconds=0.1, first=100)
    assert not assert_batch_complete(platform, more, runs, first=100)
    assert set(platform.workers_by_task(more)) == {node("w1"), node("w2")}
    platform.wait_for_workers("Counted", {node("w1"), node("w2")})
    brokers = {"redis", "rabbitmq"}
    dead = [p.name for p in platform.processes.started if p.name not in brokers and not p.alive()]
    assert not dead, f"processes died: {dead}"
    print(
        f"\nbroker restart: {down} tasks unfinished at the stop; broker started in "
        f"{broker.server.start_times[0]:.1f} s, again in {broker.server.start_times[-1]:.1f} s; "
        f"batch done {recovered_in:.1f} s after it came back; {len(twice)} tasks run twice"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_workers_tasks_run_again_on_the_other_worker_within_the_bound(
    platform: Platform, broker: Broker, counted: Path, tmp_path: Path
) -> None:
    """kill -9 of a service worker mid-run: its tasks run again on the other worker, within
    the README's bound for the broker, and are recorded once."""
    # Given two service workers of two slots each and a batch of 24 one-second tasks
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted, concurrency=2)
    ids = submit(platform, runs, 24, seconds=KILL_SECONDS)

    # When the first worker is killed while it runs tasks
    def running_on_w1() -> list[str]:
        rows = platform.query(
            "SELECT id FROM tasks WHERE worker = %s AND status = 'running'", (node("w1"),)
        )
        return [row[0] for row in rows]

    held = poll(running_on_w1, bool, 30, "tasks running on w1")
    doomed = next(p for p in platform.processes.started if p.name == "w1")
    doomed.kill()
    killed_at = time.time()

    # Then the whole batch ends, each task recorded once, none failed
    twice = assert_batch_complete(platform, ids, runs)
    # And each task the worker was running ran again on the other worker, within the bound.
    # Its runs are known by the workflow's own notes (they name the worker's process): those
    # begun less than a task's length before the kill had not ended.
    every = runs.read()
    on_w1 = {n: [at for at, pid in every[n] if pid == doomed.pid] for n in every}
    lost = sorted(
        n for n, starts in on_w1.items() if any(at > killed_at - KILL_SECONDS for at in starts)
    )
    numbers = {task_id: n for n, task_id in enumerate(ids)}
    assert {numbers[i] for i in held} <= set(lost), (held, lost)
    again = {n: min(at for at, _ in every[n] if at > killed_at) - killed_at for n in lost}
    slowest = max(again.values())
    assert slowest <= broker.redelivery_bound, again
    # And only the killed worker's tasks ran twice: those it was running, or had run without
    # sending their acknowledgement yet
    assert all(on_w1[n] for n in twice), f"tasks the killed worker never ran ran twice: {twice}"
    print(
        f"\nworker kill: {len(lost)} tasks back after {min(again.values()):.1f} to "
        f"{slowest:.1f} s (bound {broker.redelivery_bound:g} s); {len(twice)} run twice"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_the_control_plane_consumer_killed_while_recording_loses_and_repeats_nothing(
    platform: Platform, counted: Path, tmp_path: Path
) -> None:
    """kill -9 of the control-plane consumer, again and again, while a 100-task batch
    reports: every outcome is recorded, once; no run is repeated."""
    # Given two service workers and a batch of 100 tasks in flight
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted)
    ids = submit(platform, runs, 100, seconds=0.3)

    # When the control-plane consumer is killed four times while it records their outcomes
    kills = 0
    for _ in range(4):
        recorded = len(ids) - unfinished(platform, ids)
        poll(
            lambda: len(ids) - unfinished(platform, ids),
            lambda now, before=recorded: now > before or now == len(ids),
            READY_TIMEOUT,
            "the control plane recording",
        )
        consumer = next(
            p for p in reversed(platform.processes.started) if p.name == "control-plane"
        )
        consumer.kill()
        kills += 1
        platform.control_plane()

    # Then the whole batch ends, each task recorded once, none run twice
    twice = assert_batch_complete(platform, ids, runs)
    assert not twice, f"tasks run more than once: {twice}"
    assert kills == 4
