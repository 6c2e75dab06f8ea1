"""``python -m tests.soak``: run the soak and print its account (see ``tests/soak/__init__``).

Exits 0 when nothing was lost, nothing recorded twice, no task ended otherwise than its kind
asked and no session ran out of order; 1 otherwise; 2 when the soak itself could not run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import fresh_postgres_database
from tests.soak import workflow
from tests.soak.accounting import TERMINAL, Account, Watcher, account, dump, summary
from tests.soak.console import Console
from tests.soak.faults import KINDS, Faults
from tests.soak.load import Load
from tests.soak.stack import Broker, RabbitBroker, RedisBroker, SoakError, Stack
from tests.support.processes import Processes

#: Seconds between two progress lines.
PROGRESS_EVERY = 5.0
#: How long the soak waits, once the faults stopped, for every task to end: the lease bound
#: and Redis's redelivery (visibility timeout plus 10 s) fit well within it.
DRAIN = 120.0
#: Seconds the watcher goes on looking after the last task ended (a late status change).
SETTLE = 3.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Run the soak: a mixed load under faults, then an account of every task.",
    )
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the load runs")
    parser.add_argument("--seed", type=int, default=1, help="seeds the load and the faults")
    parser.add_argument("--workers", type=int, default=2, help="service workers")
    parser.add_argument("--concurrency", type=int, default=4, help="threads of each worker")
    parser.add_argument("--clients", type=int, default=3, help="client threads submitting")
    parser.add_argument(
        "--faults",
        default=",".join(KINDS),
        help=f"fault kinds to inject, comma-separated, or 'none' (default: {','.join(KINDS)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, files)")
    args = parser.parse_args(argv)
    args.fault_kinds = _kinds(parser, args.faults)
    return args


def _kinds(parser: argparse.ArgumentParser, text: str) -> dict[str, int]:
    if text == "none":
        return {}
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    return {k: KINDS[k] for k in kinds}


def make_broker(kind: str, processes: Processes, folder: Path) -> Broker:
    """The private broker of that kind."""
    if kind == "redis":
        return RedisBroker(processes, folder / "redis")
    return RabbitBroker(processes, folder / "rabbitmq")


def soak(
    args: argparse.Namespace, folder: Path, processes: Processes, database_url: str
) -> Account:
    """Start everything, run the load and the faults, wait for the tasks, account."""
    console = Console(folder / "soak.log")
    stack = start(args, folder, processes, database_url, console)
    watcher = Watcher(stack.query, console)
    watcher.start()
    load = Load(
        stack.server, folder / "runs.log", args.seed, args.clients, watcher.unfinished, console
    )
    faults = Faults(stack, args.seed, console, args.fault_kinds)
    progress = Progress(console, load, watcher, faults)
    run(args, load, faults, progress)
    drain(load, watcher, progress)
    dump(stack.query, folder / "db")
    worker_pids = {pid: f"{name}[{pid}]" for name in stack.workers for pid in stack.pids(name)}
    return account(
        load.ledger,
        stack.query,
        watcher,
        folder / "runs.log",
        faults.injected,
        worker_pids,
        console.elapsed(),
    )


def start(
    args: argparse.Namespace,
    folder: Path,
    processes: Processes,
    database_url: str,
    console: Console,
) -> Stack:
    """The broker, then the API server, the control-plane consumer and the workers, ready."""
    console.say(
        f"starting: {args.broker} broker, API server, control plane, {args.workers} workers"
    )
    broker = make_broker(args.broker, processes, folder)
    broker.start()
    (folder / "platform").mkdir()
    stack = Stack(broker, database_url, folder / "platform", processes)
    stack.start_all(workflow.write(folder / "deployment"), args.workers, args.concurrency)
    console.say(f"started; logs in {processes.folder}")
    return stack


def run(args: argparse.Namespace, load: Load, faults: Faults, progress: Progress) -> None:
    """The load, and the faults, for the minutes asked; then no more of either."""
    load.start()
    if args.fault_kinds:
        faults.start()
    progress.until(time.monotonic() + args.minutes * 60, stop=lambda: faults.error is not None)
    progress.console.say("load time over: no more faults, no more submissions")
    faults.stop()
    if faults.error is not None:
        raise SoakError(f"fault injection failed: {faults.error}")
    load.stop_submitting()


def drain(load: Load, watcher: Watcher, progress: Progress) -> None:
    """Wait (at most ``DRAIN`` seconds) for every task sent to end, answering those that ask;
    then watch a little longer for late changes."""
    progress.until(time.monotonic() + DRAIN, stop=lambda: progress.unfinished() == 0)
    load.stop_answering()
    time.sleep(SETTLE)
    watcher.stop()


class Progress:
    """The line a person watching reads every few seconds."""

    def __init__(self, console: Console, load: Load, watcher: Watcher, faults: Faults) -> None:
        self.console = console
        self.load = load
        self.watcher = watcher
        self.faults = faults

    def unfinished(self) -> int:
        """Tasks the load sent (and the API stored) that have not ended."""
        statuses = self.watcher.statuses
        return sum(
            1
            for t in self.load.ledger.all()
            if t.fate == "submitted" and statuses.get(t.task_id, "queued") not in TERMINAL
        )

    def until(self, deadline: float, stop: Callable[[], bool]) -> None:
        """Print a line every ``PROGRESS_EVERY`` seconds until ``deadline`` or ``stop()``."""
        while time.monotonic() < deadline and not stop():
            time.sleep(min(PROGRESS_EVERY, max(0.0, deadline - time.monotonic())))
            self.say()

    def say(self) -> None:
        """One progress line."""
        sent = [t for t in self.load.ledger.all() if t.fate != "refused"]
        ended = sum(1 for t in sent if t.task_id in self.watcher.ended)
        self.console.say(
            f"submitted {len(sent)}, ended {ended}, unfinished {self.unfinished()} "
            f"(waiting for input {self.watcher.count('waiting_input')}), "
            f"answered {len(self.load.ledger.answered)}, faults {len(self.faults.injected)}"
        )


class Workspace:
    """A folder for the soak's files, removed at the end unless kept."""

    def __init__(self, keep: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="celeriac-soak-"))
        self.keep = keep

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self.keep or error is not None:
            print(f"the soak's files are in {self.folder}", file=sys.stderr)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; the exit status."""
    args = parse(argv)
    try:
        with Workspace(args.keep) as space:
            processes = Processes(space.folder / "logs")
            try:
                with fresh_postgres_database("celeriac_soak") as database_url:
                    try:
                        result = soak(args, space.folder, processes, database_url)
                    finally:
                        processes.kill_all()
            except (pytest.fail.Exception, pytest.skip.Exception) as exc:
                raise SoakError(str(exc)) from None
            table = summary(result, args.broker, args.seed)
            print(table, flush=True)
            (space.folder / "summary.txt").write_text(table + "\n")
            space.keep = space.keep or not result.passed()
    except SoakError as exc:
        print(f"soak: cannot go on: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    return 0 if result.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
