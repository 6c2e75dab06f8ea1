"""The control plane's journal of durable tasks: every write idempotent, compaction, replay.

Messages are handed to ``Journal.record`` as the control-plane consumer would, as often and in
whatever order at-least-once delivery brings them, for a real task row in SQLite.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from app.control.journal import Journal
from app.models import Checkpoint, JournalTick, Task
from app.server import Server
from tests.app.conftest import deployed, ok, wait_for_task
from tests.app.test_api_hitl import human_response
from tests.app.test_durable import SUITE, TASKS
from workers.protocol import JournalWanted, JournalWritten


@pytest.fixture
def task_id(client: FlaskClient) -> str:
    """A task that ran (of a service that is not durable: its journal is the test's)."""
    deployed(client, SUITE)
    task = ok(client.post(f"{TASKS}/create", json={"service_id": "plain", "input": "{}"}))
    wait_for_task(client, "DurableSuite", task["task_id"])
    return str(task["task_id"])


@pytest.fixture
def journal(server: Server) -> Journal:
    return server.plane.journal


def written(
    task_id: str, *seqs: int, run: int = 1, applied: dict[int, int] | None = None, **fields: Any
) -> JournalWritten:
    """A message of ticks ``seqs``; ``applied`` maps a tick to the event sent in it applied."""
    applied = applied or {}
    records: list[list[Any]] = [
        [seq, json.dumps({"tick": seq}), *([applied[seq]] if seq in applied else [])]
        for seq in seqs
    ]
    through = fields.pop("through", (max(seqs) + 1) if seqs else 0)
    return JournalWritten(task_id=task_id, run=run, records=records, through=through, **fields)


def ticks(server: Server, task_id: str) -> list[tuple[int, int]]:
    with server.plane.db.read() as db:
        rows = db.execute(
            select(JournalTick.run, JournalTick.seq)
            .where(JournalTick.task_id == task_id)
            .order_by(JournalTick.run, JournalTick.seq)
        ).all()
    return [(run, seq) for run, seq in rows]


def checkpoint(server: Server, task_id: str) -> Checkpoint:
    with server.plane.db.read() as db:
        found = db.get(Checkpoint, task_id)
        assert found is not None
        return found


def step(seq: int, name: str = "one", event: str = "e1") -> dict[str, Any]:
    return {
        "seq": seq,
        "step": name,
        "started_at": 1000.0 + seq,
        "ended_at": 1000.5 + seq,
        "outcome": "returned Two",
        "input": "$service.counted.Two",
        "input_key": event,
    }


def test_a_message_delivered_twice_is_written_once(
    server: Server, journal: Journal, task_id: str
) -> None:
    message = written(task_id, 0, 1, 2, state={"a": 1}, applied={1: 0}, steps=[step(2)])
    assert journal.record(message)
    assert journal.record(message)
    assert ticks(server, task_id) == [(1, 0), (1, 1), (1, 2)]
    assert [s.step for s in journal.steps(task_id)] == ["one"]
    assert checkpoint(server, task_id).state == {"a": 1}
    # The replay knows the journal took event 0 sent in (tick 1 applied it)
    assert journal.replay(JournalWanted(task_id=task_id, run=1, inbox="q")).inputs == 0


def test_a_late_message_never_takes_the_state_back(
    server: Server, journal: Journal, task_id: str
) -> None:
    newer = written(task_id, 3, 4, state={"a": 2}, applied={3: 1})
    older = written(task_id, 0, 1, 2, state={"a": 1}, applied={1: 0})
    journal.record(newer)
    journal.record(older)  # processed after, by another consumer
    kept = checkpoint(server, task_id)
    assert (kept.state, kept.state_through) == ({"a": 2}, 5)
    assert ticks(server, task_id) == [(1, s) for s in range(5)]
    assert journal.replay(JournalWanted(task_id=task_id, run=1, inbox="q")).inputs == 1


def test_a_snapshot_compacts_the_ticks_before_it_and_an_older_one_changes_nothing(
    server: Server, journal: Journal, task_id: str
) -> None:
    journal.record(written(task_id, *range(6)))
    journal.record(written(task_id, 6, snapshot={"journal_seq": 5, "state": {}}))
    assert ticks(server, task_id) == [(1, 5), (1, 6)]
    journal.record(written(task_id, snapshot={"journal_seq": 2, "state": {}}, through=3))
    assert checkpoint(server, task_id).journal_seq == 5
    # A tick compacted away and sent again is not stored again.
    journal.record(written(task_id, 1, 2))
    assert ticks(server, task_id) == [(1, 5), (1, 6)]

    replay = journal.replay(JournalWanted(task_id=task_id, run=1, inbox="inbox"))
    assert replay.snapshot == {"journal_seq": 5, "state": {}}
    assert [seq for seq, _ in replay.records] == [5, 6]


def test_a_message_of_another_run_changes_nothing_and_a_new_run_starts_over(
    server: Server, journal: Journal, task_id: str
) -> None:
    journal.record(written(task_id, 0, 1, state={"a": 1}))
    assert not journal.record(written(task_id, 0, run=2))  # the task is in its run 1
    assert ticks(server, task_id) == [(1, 0), (1, 1)]

    with server.plane.db.begin() as db:  # as a retry makes it
        db.get_one(Task, task_id).run = 2
    assert journal.record(written(task_id, 0, run=2))
    assert ticks(server, task_id) == [(2, 0)]
    assert checkpoint(server, task_id).state is None
    # A worker of run 1 asking now starts from nothing.
    replay = journal.replay(JournalWanted(task_id=task_id, run=1, inbox="inbox"))
    assert (replay.records, replay.snapshot, replay.inputs) == ([], None, -1)


def test_each_execution_of_a_step_on_the_same_event_is_one_more_attempt(
    journal: Journal, task_id: str
) -> None:
    journal.record(written(task_id, 0, steps=[step(0, "ask", "q")]))
    journal.record(written(task_id, 1, steps=[step(1, "other", "q")]))
    journal.record(written(task_id, 2, steps=[step(2, "ask", "q")]))
    journal.record(written(task_id, 2, steps=[step(2, "ask", "q")]))  # again
    listed = journal.steps(task_id)
    assert [(s.step, s.attempt) for s in listed] == [("ask", 1), ("other", 1), ("ask", 2)]
    assert listed[0].duration == pytest.approx(0.5)


def test_the_replay_sends_the_events_sent_in_that_the_journal_lacks(
    server: Server, client: FlaskClient, journal: Journal
) -> None:
    # Given a durable task whose answer (event number 0) is taken by a step before the last
    deployed(client, SUITE)
    task = ok(client.post(f"{TASKS}/create", json={"service_id": "ask_more", "input": "{}"}))
    url = f"{TASKS}/{task['task_id']}"
    ok(
        client.post(
            f"{url}/events", json={"service_id": "ask_more", "event_obj_str": human_response("a")}
        )
    )
    done = wait_for_task(client, "DurableSuite", task["task_id"])
    assert done["result"]["answer"] == "a"
    # The run's journal includes the answer: nothing is pending. (The last step's ticks,
    # which returned the StopEvent, are not journaled: they travel with the outcome.)
    replay = journal.replay(JournalWanted(task_id=task["task_id"], run=1, inbox="inbox"))
    assert replay.inputs == 0 and replay.pending == []
    assert replay.next_seq > 0 and replay.records


def test_a_replay_never_hands_out_a_journal_with_a_gap(journal: Journal, task_id: str) -> None:
    # Given a run's second message recorded before its first (two consumer threads)
    assert journal.record(written(task_id, 3, 4))
    # When another worker resumes the run before the first message is recorded
    replay = journal.replay(JournalWanted(task_id=task_id, run=1, inbox="q"))
    # Then what it gets starts at the beginning and has no gap
    seqs = [int(seq) for seq, _ in replay.records]
    assert seqs == list(range(len(seqs))), seqs


def test_a_late_message_of_a_lost_worker_does_not_mix_into_the_resumed_runs_journal(
    server: Server, journal: Journal, task_id: str
) -> None:
    # Given a run that journaled ticks 0-2, resumed elsewhere from them (a new attempt)
    assert journal.record(written(task_id, 0, 1, 2))
    resuming = journal.replay(JournalWanted(task_id=task_id, run=1, inbox="q"))
    assert [seq for seq, _ in resuming.records] == [0, 1, 2]
    # When the lost worker's message of ticks 3-4, sent before it died, is recorded late
    lost = [[seq, json.dumps({"tick": seq, "by": "lost"})] for seq in (3, 4)]
    assert not journal.record(JournalWritten(task_id=task_id, run=1, records=lost, through=5))
    # And the resumed run journals its own ticks 3-4
    resumed = [[seq, json.dumps({"tick": seq, "by": "resumed"})] for seq in (3, 4)]
    assert journal.record(
        JournalWritten(task_id=task_id, run=1, records=resumed, through=5, epoch=resuming.epoch)
    )
    # Then the journal a later resume gets is the resumed run's
    replay = journal.replay(JournalWanted(task_id=task_id, run=1, inbox="q"))
    assert [json.loads(data).get("by") for _, data in replay.records][3:] == ["resumed"] * 2
