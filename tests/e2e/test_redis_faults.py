"""Redis faults of its own: a consumer killed in the instant after Redis handed it a message,
and consumers killed holding messages, which come back without waiting for the visibility
timeout. The faults every broker must survive (a restart under load, a worker or the
control-plane consumer killed) are in ``test_broker_faults.py``, on Redis and on RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from tests.e2e.batches import Runs, assert_batch_complete, start, submit, unfinished
from tests.e2e.conftest import Platform, node
from tests.support.processes import READY_TIMEOUT, Processes, poll
from tests.support.servers import PrivateRedis
from workers.transports import REDIS_OWNER_BOUND, REDIS_OWNER_TTL, REDIS_TRANSPORT

#: The visibility timeout of these tests: far longer than any of them waits.
LONG_VISIBILITY = 3600
#: What a busy 2-core machine may add to the README's bound for a dead consumer's messages.
SLACK = 5.0

#: A consumer that takes messages from one queue and never acknowledges them.
CONSUMER = """\
import sys
from kombu import Connection, Exchange, Queue

url, transport, name = sys.argv[1:]
queue = Queue(name, Exchange(name), routing_key=name)
# A long wait, so that the consumer is still waiting when the test freezes it.
options = {"visibility_timeout": 3600, "polling_interval": 60}
with Connection(url, transport=None if transport == "kombu" else transport,
                transport_options=options) as conn:
    with conn.Consumer([queue], callbacks=[lambda body, message: print("got", body, flush=True)]):
        print("ready", flush=True)
        while True:
            try:
                conn.drain_events(timeout=5)
            except TimeoutError:
                pass
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    "transport",
    [
        pytest.param(REDIS_TRANSPORT, id="celeriac"),
        pytest.param(
            "kombu",
            id="kombu",
            marks=pytest.mark.xfail(
                strict=True,
                reason="Kombu's Redis transport pops with BRPOP, then notes the message as "
                "unacknowledged: a consumer killed in between loses the message",
            ),
        ),
    ],
)
def test_a_consumer_killed_after_redis_handed_it_a_message_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path, transport: str
) -> None:
    """The window the control-plane consumer was killed in: Redis answered its wait with a
    message, and it died before it noted the message as unacknowledged."""
    # Given a consumer blocked waiting on an empty queue
    queue = Queue("handed", Exchange("handed"), routing_key="handed")
    log = (tmp_path / "consumer.log").open("wb")
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, private_redis.url, transport, queue.name],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    client = private_redis.client()
    try:
        poll(
            lambda: int(client.info("clients")["blocked_clients"]),
            lambda blocked: blocked >= 1,
            READY_TIMEOUT,
            "the consumer waiting on Redis",
        )
        # When it is frozen, a message arrives (Redis answers the wait at once), and the
        # consumer is killed before it could read the answer
        os.kill(consumer.pid, signal.SIGSTOP)
        with Connection(private_redis.url, transport=REDIS_TRANSPORT) as conn:
            conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="handed")
        poll(
            lambda: int(client.info("clients")["blocked_clients"]),
            lambda blocked: blocked == 0,
            5,
            "Redis answering the consumer's wait",
        )
        consumer.kill()
        consumer.wait(timeout=10)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=10)
        log.close()

    # Then the message is still in Redis: in its queue, or noted as unacknowledged
    kept = int(client.llen("handed")) + int(client.hlen("unacked"))
    client.close()
    assert kept == 1, (tmp_path / "consumer.log").read_text()


#: A consumer through Celeriac's transport, as Celeriac configures it (with a visibility
#: timeout of an hour), that takes messages of one queue and never acknowledges them.
HOLDER = """\
import sys
from kombu import Connection, Exchange, Queue
from config.settings import Settings
from workers.transports import transport_options

url, name = sys.argv[1:]
queue = Queue(name, Exchange(name), routing_key=name)
options = transport_options(Settings(broker_url=url, visibility_timeout=3600))
with Connection(url, transport=options["broker_transport"],
                transport_options=options["broker_transport_options"]) as conn:
    with conn.Consumer([queue], callbacks=[lambda body, message: print("got", body, flush=True)]):
        print("ready", flush=True)
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_a_message_held_by_a_killed_consumer_is_back_in_its_queue_within_the_owner_bound(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    # Given a consumer holding a message unacknowledged, and another consumer (of another
    # queue) looking for lost messages, both with a visibility timeout of an hour
    root = str(Path(__file__).parents[2])
    env = dict(os.environ, PYTHONPATH=root)
    holder = processes.start(
        "holder", [sys.executable, "-c", HOLDER, private_redis.url, "held"], env, cwd=Path(root)
    )
    sweeper = processes.start(
        "sweeper", [sys.executable, "-c", HOLDER, private_redis.url, "idle"], env, cwd=Path(root)
    )
    started = time.monotonic()
    for process in (holder, sweeper):
        poll(process.output, lambda out: "ready" in out, READY_TIMEOUT, f"{process.name} ready")
    with Connection(private_redis.url, transport=REDIS_TRANSPORT) as conn:
        queue = Queue("held", Exchange("held"), routing_key="held")
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="held")
    poll(holder.output, lambda out: "got {'n': 1}" in out, 10, "the holder taking the message")
    client = private_redis.client()
    owners = {v.decode() for v in client.hvals("unacked_owner")}
    assert [owner.split(".")[-2] for owner in owners] == [str(holder.pid)]
    # And while the holder lives, the other's looks leave its message alone
    time.sleep(max(0.0, started + REDIS_OWNER_TTL + 4 - time.monotonic()))
    assert client.llen("held") == 0 and client.hlen("unacked") == 1

    # When the holder is killed
    holder.kill()
    killed_at = time.monotonic()

    # Then the message is back in its queue within the owner's bound, and noted nowhere else
    poll(
        lambda: client.llen("held"), lambda n: n >= 1, REDIS_OWNER_BOUND + SLACK, "the message back"
    )
    back_in = time.monotonic() - killed_at
    assert client.llen("held") == 1
    assert (
        client.hlen("unacked") == client.hlen("unacked_owner") == client.zcard("unacked_index") == 0
    )
    client.close()
    assert sweeper.alive()
    print(f"\nmessage of a killed consumer back in {back_in:.1f} s (bound {REDIS_OWNER_BOUND} s)")


@pytest.fixture
def long_visibility_platform(
    private_redis: PrivateRedis, make_platform: Callable[[str], Platform]
) -> Platform:
    """A distributed platform on a private Redis whose visibility timeout is an hour, and whose
    control plane sends no queued task again by itself within a test's time."""
    platform = make_platform(private_redis.url)
    platform.settings |= {
        "CELERIAC_VISIBILITY_TIMEOUT": str(LONG_VISIBILITY),
        "CELERIAC_REDISPATCH_AFTER": "600",
    }
    return platform


@pytest.mark.e2e
@pytest.mark.slow
def test_the_outcomes_a_killed_control_plane_consumer_held_are_recorded_within_the_owner_bound(
    long_visibility_platform: Platform, private_redis: PrivateRedis, counted: Path, tmp_path: Path
) -> None:
    """The workers are alive, so no lease runs out: only Redis can give back the reports the
    killed consumer held unacknowledged."""
    platform = long_visibility_platform
    # Given two service workers and a batch of 60 tasks reporting
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted)
    ids = submit(platform, runs, 60, seconds=0.2)
    poll(lambda: len(ids) - unfinished(platform, ids), lambda n: n >= 5, 60, "outcomes recorded")

    # When the control-plane consumer is killed while it holds reports, and started again
    client = private_redis.client()
    consumer = next(p for p in platform.processes.started if p.name == "control-plane")
    held = poll(
        lambda: [v.decode() for v in client.hvals("unacked_owner")],
        lambda owners: any(f".{consumer.pid}." in o for o in owners),
        30,
        "the control-plane consumer holding a report",
    )
    consumer.kill()
    killed_at = time.monotonic()
    platform.control_plane()

    # Then every outcome is recorded, once, none run twice, within the owner's bound
    twice = assert_batch_complete(platform, ids, runs)
    took = time.monotonic() - killed_at
    assert not twice, f"tasks run more than once: {twice}"
    assert took <= REDIS_OWNER_BOUND + SLACK, f"batch done {took:.1f} s after the kill"
    client.close()
    print(f"\ncontrol plane killed holding {len(held)} messages; batch done {took:.1f} s later")


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_tasks_a_worker_took_before_it_reported_their_start_run_on_the_other_worker(
    long_visibility_platform: Platform, private_redis: PrivateRedis, counted: Path, tmp_path: Path
) -> None:
    """A worker killed within a run's first 0.25 s never reported its start: the control plane
    holds no lease for it (it is still ``queued``), and only Redis can give it back."""
    platform = long_visibility_platform
    # Given two service workers
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted, concurrency=2)
    doomed = next(p for p in platform.processes.started if p.name == "w1")
    client = private_redis.client()

    # When a batch of quick tasks arrives and the first worker is killed as soon as it has
    # taken some, before it reported their start
    ids = submit(platform, runs, 8, seconds=0.1)
    taken = poll(
        lambda: [
            t.decode()
            for t, o in client.hgetall("unacked_owner").items()
            if f".{doomed.pid}." in o.decode()
        ],
        bool,
        30,
        "the first worker holding tasks",
    )
    doomed.kill()
    killed_at = time.monotonic()

    # Then every task ends, recorded once, and those the killed worker took ran on the other
    # worker within the owner's bound
    assert_batch_complete(platform, ids, runs)
    took = time.monotonic() - killed_at
    # (a run the killed worker had begun and noted may run again: at least once)
    assert node("w2") in platform.workers_by_task(ids)
    assert took <= REDIS_OWNER_BOUND + SLACK, f"batch done {took:.1f} s after the kill"
    client.close()
    print(f"\nworker killed holding {len(taken)} tasks; batch done {took:.1f} s later")
