"""Durable runs on the worker's side: what they journal, and how a run resumes from it.

The control plane is played by :class:`KeptJournal`, which keeps what runs send as the real
one does (``app.control.journal``, tested against the database in ``tests/app``). A run is
interrupted by the control plane's stop, which ends it as a lost worker would, but for the
report; another runtime (another worker, with the code imported under another name) then
resumes it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from config.deployment import load_deployment_file
from tests.workers.conftest import RecordingReporter
from workers.durable import SERVICE_PACKAGE, Journals
from workers.protocol import (
    JournalReplay,
    JournalWanted,
    JournalWritten,
    RunStep,
    StopRuns,
)
from workers.runtime import ServiceRuntime

SUITE = Path(__file__).resolve().parents[1] / "app" / "workflows" / "durable" / "deployment.yml"


class KeptJournal(Journals):
    """The control plane's side of the journal, in memory."""

    def __init__(self) -> None:
        super().__init__(lambda wanted: None)
        self.ticks: dict[int, str] = {}
        self.state: dict[str, Any] | None = None
        self.state_through = -1
        self.inputs = -1
        self.epoch = 0
        self.snapshot: dict[str, Any] | None = None

    def take(self, messages: list[JournalWritten]) -> None:
        for message in messages:
            for record in message.records:
                self.ticks.setdefault(int(record[0]), record[1])
                if len(record) > 2:
                    self.inputs = max(self.inputs, int(record[2]))
            if message.state is not None and message.through > self.state_through:
                self.state, self.state_through = message.state, message.through
            if message.snapshot is not None:
                self.snapshot = message.snapshot
                first = int(message.snapshot["journal_seq"])
                self.ticks = {seq: data for seq, data in self.ticks.items() if seq >= first}

    def fetch(self, task_id: str, run: int, inbox: str) -> JournalReplay:
        wanted = JournalWanted(task_id=task_id, run=run, inbox=inbox)
        self.epoch += 1
        return JournalReplay(
            wanted=wanted.id,
            task_id=task_id,
            epoch=self.epoch,
            snapshot=self.snapshot,
            records=[[seq, self.ticks[seq]] for seq in sorted(self.ticks)],
            state=self.state,
            inputs=self.inputs,
            next_seq=0,
        )


def worker(tmp_path: Path, name: str, journal: KeptJournal) -> ServiceRuntime:
    runtime = ServiceRuntime(tmp_path / name, worker_name=name)
    runtime.install(load_deployment_file(SUITE), SUITE.parent)
    runtime.journals = journal
    return runtime


def counts(log: Path) -> dict[str, int]:
    seen: dict[str, int] = {}
    for line in log.read_text().split():
        seen[line] = seen.get(line, 0) + 1
    return seen


def step_of(log: Path, pause: float) -> RunStep:
    return RunStep(
        task_id="t-durable",
        session_id=None,
        deployment="DurableSuite",
        service="pipeline",
        input={"log": str(log), "pause": pause},
        run=1,
        durable=True,
    )


def test_an_interrupted_run_resumes_after_its_last_finished_step(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    journal = KeptJournal()
    first, reporter = worker(tmp_path, "first", journal), RecordingReporter()
    step = step_of(log, pause=30.0)
    hold = Path(f"{log}.hold")
    hold.touch()
    try:
        # Given a durable run stopped in the middle of its third step
        running = threading.Thread(target=first.run, args=(step, reporter))
        running.start()
        deadline = time.monotonic() + 10
        while not (log.exists() and "three" in log.read_text()):
            assert time.monotonic() < deadline, "step three never began"
            time.sleep(0.01)
        first.stop_runs(StopRuns(runs=[[step.task_id, step.run]], reason="cancelled"))
        running.join(timeout=10)
    finally:
        first.close()
    hold.unlink()
    journal.take(reporter.journal_messages)
    # (its journal names its classes by the service, not by the worker's private package)
    assert journal.ticks and all(
        "_celeriac_services" not in data for data in journal.ticks.values()
    )
    assert any(f'"{SERVICE_PACKAGE}.' in data for data in journal.ticks.values())

    # When another worker runs it again from that journal
    second, again = worker(tmp_path, "second", journal), RecordingReporter()
    try:
        outcome = second.run(step_of(log, pause=0.0), again)
    finally:
        second.close()

    # Then steps one and two ran once, three again from its top, and the result counts
    # what the first two stored before the interruption
    assert outcome is not None and outcome.ok, outcome
    assert outcome.result == {"total": 15}
    assert counts(log) == {"one": 1, "two": 1, "three": 2, "four": 1, "five": 1}
    # and the resumed run journals on from where the first stopped
    resumed = [int(r[0]) for m in again.journal_messages for r in m.records]
    assert resumed and min(resumed) == max(journal.ticks) + 1


def test_a_run_journals_each_step_as_it_ends_with_the_store_when_it_changed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "steps.log"
    journal = KeptJournal()
    runtime, reporter = worker(tmp_path, "only", journal), RecordingReporter()
    try:
        outcome = runtime.run(step_of(log, pause=0.0), reporter)
    finally:
        runtime.close()
    assert outcome is not None and outcome.ok
    messages = reporter.journal_messages
    steps = [s["step"] for m in messages for s in m.steps]
    assert steps == ["one", "two", "three", "four"]
    # The last step, which returned the StopEvent, goes with the outcome (without ticks)
    assert outcome.journal is not None
    last = JournalWritten.decode(outcome.journal)
    assert ([s["step"] for s in last.steps], last.records) == (["five"], [])
    seqs = [int(r[0]) for m in messages for r in m.records]
    assert seqs == list(range(len(seqs)))
    # ``five`` stores nothing: the store goes with the steps that changed it, not after it.
    assert [m.state is not None for m in messages if m.steps][:4] == [True] * 4
    assert all(m.through >= int(m.records[-1][0]) + 1 for m in messages if m.records)


class Asked(KeptJournal):
    """A journal that counts the runs that asked for it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def fetch(self, task_id: str, run: int, inbox: str) -> JournalReplay:
        self.asked += 1
        return super().fetch(task_id, run, inbox)


def test_only_a_runs_first_message_first_delivered_skips_asking_for_the_journal(
    tmp_path: Path,
) -> None:
    journal = Asked()
    runtime = worker(tmp_path, "only", journal)
    try:
        first = replace(step_of(tmp_path / "a.log", pause=0.0), fresh=True)
        # The run's first message, as the broker first delivers it: nothing to ask for
        assert runtime.run(first, RecordingReporter(), redelivered=False).ok  # type: ignore[union-attr]
        assert journal.asked == 0
        # The same message put back by the broker, and a message sent again, ask
        again = replace(first, task_id="t-other")
        assert runtime.run(again, RecordingReporter(), redelivered=True).ok  # type: ignore[union-attr]
        resent = replace(first, task_id="t-third", fresh=False)
        assert runtime.run(resent, RecordingReporter(), redelivered=False).ok  # type: ignore[union-attr]
        assert journal.asked == 2
    finally:
        runtime.close()


def test_a_run_waiting_for_its_journal_gives_up_when_the_worker_stops() -> None:
    journals = Journals(lambda wanted: None, timeout=30.0)
    failed: list[BaseException] = []

    def fetch() -> None:
        try:
            journals.fetch("t-1", 1, "inbox")
        except BaseException as exc:
            failed.append(exc)

    waiting = threading.Thread(target=fetch)
    waiting.start()
    time.sleep(0.1)
    started = time.monotonic()
    journals.give_up()
    waiting.join(timeout=5)
    assert time.monotonic() - started < 1.0
    assert [type(exc).__name__ for exc in failed] == ["ControlPlaneUnreachable"]
