"""Mutation testing of the task lifecycle, the outbox and the event stream, with cosmic-ray.

    nice -n 10 .venv/bin/python -m tests.mutation [TARGET ...] [--jobs 2]
    .venv/bin/python -m tests.mutation --report        # the last run's results again
    nice -n 10 .venv/bin/python -m tests.mutation --survivors  # only the last run's survivors

Targets (the code whose every line decides what a task's record and its stream say):

- ``lifecycle``: the package ``app/control/lifecycle`` (operations, statements, guards,
  attempts, turns), tried against the state-machine, late-report, lease, outbox, session,
  human-input and task tests;
- ``outbox``: ``app/control/outbox.py``, against the outbox and broker-refusal tests;
- ``stream``: ``app/control/events.py`` (reading a task's stream as it grows: gaps,
  stragglers, keep-alives, and events sent in) and ``app/api/streams.py`` (its wire formats:
  NDJSON, SSE, the workflow server's envelopes, ``Last-Event-ID``), against the event,
  late-report, human-input, workflow-server, waiter and CLI-stream tests. The routes that
  call them (``app/api/tasks.py``, ``workflow_server.py``) are thin and stay out.

All of them run on SQLite and the ``memory://`` transport, with in-process workers.

Why cosmic-ray and not mutmut: the lifecycle's SQL statements and their status guards are
built once, at import (``statements.py``), and mutmut 3 only mutates function bodies (its
trampolines switch functions at call time); cosmic-ray mutates any line and runs each mutant
in a fresh process, and its HTTP workers run mutants side by side in copies of the tree.

How a run goes, all under ``.mutation/`` (git-ignored; the tree itself is never touched):

1. the tree is copied once per job (``--jobs``, 2 at most: a shared 2-core machine), and a
   cosmic-ray HTTP worker started in each copy, at ``nice`` 10;
2. each target's tests run once under coverage, with a context per test: which tests run
   which line (``tests/support/coverage_map.py``; for a line run only at import, such as a
   statement built at import, the tests of the code that reads what it defines). That run
   is also the baseline: a failing test stops everything;
3. cosmic-ray lists the mutants; those of operators or places this script leaves out (below)
   are marked skipped; each other one is applied in a copy and its test command
   (``python -m tests.mutation test``) runs, with ``-x``, only the tests that run the
   mutated lines, in the order of the full run. A mutant no test runs survives at once;
4. with ``--survivors``, only the mutants the last run did not kill run again, against the
   tests as they are now: a test added cannot let a killed mutant live, so this is the same
   result as a whole run, in a fraction of its time (the code under test must not have
   changed; the run refuses otherwise);
5. the per-target counts and every survivor (file:line, the operator, the line before and
   after) are printed, and written to ``.mutation/report.txt``.

Left out, and why (each is a mutant that says nothing about the tests):

- binary, comparison and unary operators are replaced by their natural counterparts only
  (``+``/``-``, ``*``/``/``, ``&``/``|``, ``==``/``!=``, ``<``/``<=``/``>=``, ``is``/``is
  not``, a removed ``not``/``-``/``~``): cosmic-ray's default swaps each operator for every
  other one (``+`` to ``<<``, ``**``, ``^``...), 1,263 mutants here where 400 say as much;
- mutants inside annotations: every target module has ``from __future__ import
  annotations``, so annotations are never evaluated and their mutants cannot be told apart;
- mutants in the PostgreSQL-only statements (``statements.finish_at_once``,
  ``Attempts.in_finish``): the SQLite run never executes them (the PostgreSQL tests of
  ``tests/e2e`` do).

Kill rate = (killed + timed out) / (killed + timed out + survived). Survivors that are
equivalent or not worth a test are explained in ``tests/mutation_survivors.md``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.coverage_map import Coverage, changed_lines, record

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".mutation"


@dataclasses.dataclass(frozen=True)
class Target:
    """Code to mutate, and the tests that should notice."""

    paths: tuple[str, ...]
    tests: tuple[str, ...]
    #: A ``-k`` expression: the tests of these files that need PostgreSQL stay out.
    keyword: str = "not postgresql and not another_sweeper"


TARGETS = {
    "lifecycle": Target(
        paths=("app/control/lifecycle",),
        tests=(
            "tests/app/test_lifecycle.py",
            "tests/app/test_late_reports.py",
            "tests/app/test_leases.py",
            "tests/e2e/test_outbox.py",
            "tests/app/test_unavailable.py",
            "tests/app/test_api_hitl.py",
            "tests/app/test_api_sessions.py",
            "tests/app/test_api_sessions_context.py",
        ),
    ),
    "outbox": Target(
        paths=("app/control/outbox.py",),
        tests=(
            "tests/e2e/test_outbox.py",
            "tests/app/test_unavailable.py",
        ),
    ),
    "stream": Target(
        paths=("app/control/events.py", "app/api/streams.py"),
        tests=(
            "tests/app/test_api_events.py",
            "tests/app/test_late_reports.py",
            "tests/app/test_api_hitl.py",
            "tests/app/test_api_workflow_server.py",
            "tests/app/test_waiter.py",
            "tests/app/test_cli_stream.py",
        ),
    ),
}

#: The operators kept (see the module's docstring): every operator that is not a binary,
#: comparison or unary replacement, and of those the natural counterparts.
KEPT_OPERATORS = re.compile(
    r"core/("
    r"ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Div|Mod_FloorDiv"
    r"|BitAnd_BitOr|BitOr_BitAnd)"
    r"|ReplaceComparisonOperator_(Eq_NotEq|NotEq_Eq|Lt_LtE|Lt_GtE|LtE_Lt|LtE_Gt|Gt_GtE|Gt_LtE"
    r"|GtE_Gt|GtE_Lt|Is_IsNot|IsNot_Is|In_NotIn|NotIn_In)"
    r"|ReplaceUnaryOperator_(Delete_\w+|USub_UAdd)"
    r"|(?!ReplaceBinaryOperator|ReplaceComparisonOperator|ReplaceUnaryOperator)\w+"
    r")"
)
#: Definitions run only on PostgreSQL, by file.
POSTGRES_ONLY = {
    "app/control/lifecycle/statements.py": ("finish_at_once",),
    "app/control/lifecycle/attempts.py": ("in_finish",),
}
#: The most jobs at once: the machine has 2 cores, shared.
MAX_JOBS = 2
NICENESS = 10
#: What a mutant's test run prints when no test runs its lines.
NOT_RUN = "mutation: no test runs the mutated lines"


# -- the tree's copies and the workers -------------------------------------------------------


def copy_tree(dest: Path) -> None:
    """Copy the working tree's files (tracked, or new and not ignored) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quiet_env() -> dict[str, str]:
    """The environment of a copy's processes: no bytecode written (a mutant and the original
    may share a size and a second, and a stale .pyc would hide the mutant)."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


@contextlib.contextmanager
def workers(copies: list[Path]) -> Iterator[list[str]]:
    """A cosmic-ray HTTP worker in each copy; their URLs."""
    started: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for copy in copies:
            port = free_port()
            log = (copy.parent / f"{copy.name}.worker.log").open("wb")
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cosmic_ray.cli", "http-worker", "--port", str(port)],
                    cwd=copy,
                    env=quiet_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if started[-1].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the cosmic-ray worker in {copy} did not start")
                time.sleep(0.2)
        yield urls
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- which tests run which lines -------------------------------------------------------------


def target_files(target: Target, root: Path = REPO) -> list[str]:
    files: list[str] = []
    for path in target.paths:
        if (root / path).is_dir():
            files.extend(str(p.relative_to(root)) for p in sorted((root / path).rglob("*.py")))
        else:
            files.append(path)
    return files


def pytest_args(target: Target, basetemp: Path) -> list[str]:
    return ["-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", "-k", target.keyword]


def map_lines(name: str, out: Path) -> int:
    """Map which of the target's tests run which of its lines (cwd: a copy)."""
    target = TARGETS[name]
    root = Path.cwd()
    args = [*pytest_args(target, root / f".pytest-{name}"), *target.tests]
    return record(root, target_files(target, root), args, out)


def select_tests(name: str, work: Path, root: Path) -> list[str] | None:
    """The tests that run the lines mutated in ``root`` (a copy), fastest first: [] for
    none, None for all of them."""
    files = target_files(TARGETS[name], root)
    sources = {f: (work / "pristine" / f).read_text() for f in files}
    coverage = Coverage(json.loads((work / f"{name}.map.json").read_text()), sources)
    wanted: set[str] = set()
    for file in files:
        after = (root / file).read_text()
        for line in changed_lines(sources[file], after) if after != sources[file] else []:
            tests, at_import = coverage.tests_of(file, line)
            wanted |= tests
            if at_import:
                users = coverage.tests_at_import(file, line)
                if users is None:
                    return None
                wanted |= users
    return sorted(wanted & coverage.durations.keys(), key=coverage.durations.__getitem__)


def run_mutant_tests(name: str, work: Path) -> int:
    """The test command of a mutant (cwd: a copy): the tests that run its lines, ``-x``."""
    import pytest

    root = Path.cwd()
    target = TARGETS[name]
    selected = select_tests(name, work, root)
    if selected == []:
        print(NOT_RUN)
        return 0
    print(f"mutation: {'all' if selected is None else len(selected)} tests")
    tests = list(target.tests) if selected is None else selected
    return int(pytest.main(["-x", *pytest_args(target, root / f".pytest-{name}"), *tests]))


# -- the run ---------------------------------------------------------------------------------


def annotations_of(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where ``source``'s annotations are, if it never evaluates them."""
    tree = ast.parse(source)
    if not any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    ):
        return []
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.extend([node.returns] if node.returns else [])
        elif isinstance(node, ast.arg | ast.AnnAssign):
            found.extend([node.annotation] if node.annotation else [])
    return [((a.lineno, a.col_offset), (a.end_lineno or 0, a.end_col_offset or 0)) for a in found]


def left_out(mutation: Any, annotations: dict[str, list[Any]]) -> str | None:
    """Why this script leaves ``mutation`` out, or None."""
    if not KEPT_OPERATORS.fullmatch(mutation.operator_name):
        return "operator"
    path = str(mutation.module_path)
    if mutation.definition_name in POSTGRES_ONLY.get(path, ()):
        return "postgresql-only"
    start = tuple(mutation.start_pos)
    if any(begin <= start < end for begin, end in annotations[path]):
        return "annotation"
    return None


@dataclasses.dataclass
class Outcome:
    """One mutant's result, as this script reports it."""

    job_id: str
    path: str
    line: int
    operator: str
    verdict: str  # killed, timed out, survived, not run, error, skipped
    before: str = ""
    after: str = ""
    seconds: float = 0.0


def verdict_of(result: Any) -> str:
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    if result.worker_outcome == WorkerOutcome.SKIPPED:
        return "skipped"
    if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome not in (
        TestOutcome.KILLED,
        TestOutcome.SURVIVED,
    ):
        return "error"
    if result.test_outcome == TestOutcome.KILLED:
        return "timed out" if result.output == "timeout" else "killed"
    return "not run" if NOT_RUN in (result.output or "") else "survived"


def diff_lines(diff: str | None) -> tuple[str, str]:
    lines = (diff or "").splitlines()
    before = [x[1:].strip() for x in lines if x.startswith("-") and not x.startswith("---")]
    after = [x[1:].strip() for x in lines if x.startswith("+") and not x.startswith("+++")]
    return " ".join(before), " ".join(after)


def outcomes(session: Path) -> list[Outcome]:
    from cosmic_ray.work_db import WorkDB, use_db

    found = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            mutation = item.mutations[0]
            before, after = diff_lines(result.diff)
            found.append(
                Outcome(
                    item.job_id,
                    str(mutation.module_path),
                    mutation.start_pos[0],
                    mutation.operator_name.removeprefix("core/"),
                    verdict_of(result),
                    before,
                    after,
                )
            )
    return found


def mutate(name: str, urls: list[str], timeout: float, *, again: bool = False) -> None:
    """Make the target's session, leave out what this script leaves out, and run the rest;
    ``again``: run once more the mutants of the last session that were not killed."""
    import aiohttp
    from cosmic_ray.commands.init import init
    from cosmic_ray.distribution.http import HttpDistributor
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    target = TARGETS[name]
    files = target_files(target, WORK / "pristine")
    session = WORK / f"{name}.sqlite"
    annotations = {f: annotations_of((WORK / "pristine" / f).read_text()) for f in files}
    command = shlex.join([sys.executable, "-m", "tests.mutation", "test", name, str(WORK)])
    if again:
        alive = [
            o.job_id for o in outcomes(session) if o.verdict in ("survived", "not run", "error")
        ]
        with contextlib.closing(sqlite3.connect(session)) as conn, conn:
            conn.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in alive])
    else:
        session.unlink(missing_ok=True)
    with use_db(str(session), WorkDB.Mode.create) as db:
        if not again:
            os.chdir(WORK / "pristine")  # cosmic-ray notes each module's path as given
            try:
                init([Path(f) for f in files], db, {})
            finally:
                os.chdir(REPO)
        pending = []
        for item in db.pending_work_items:
            reason = left_out(item.mutations[0], annotations)
            if reason is None:
                pending.append(item)
            else:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        total, done, tally = len(pending), 0, Counter[str]()
        by_job = {item.job_id: item for item in pending}
        began = time.monotonic()
        print(f"{name}: {total} mutants, timeout {timeout:.0f} s", flush=True)

        def on_complete(job_id: str, result: WorkResult) -> None:
            nonlocal done
            db.set_result(job_id, result)
            done += 1
            verdict = verdict_of(result)
            tally[verdict] += 1
            mutation = by_job[job_id].mutations[0]
            where = f"{mutation.module_path}:{mutation.start_pos[0]}"
            elapsed = time.monotonic() - began
            print(
                f"[{name} {done}/{total} {elapsed:5.0f}s] {verdict:9} {where} "
                f"{mutation.operator_name.removeprefix('core/')}",
                flush=True,
            )
            if verdict in ("survived", "error"):
                before, after = diff_lines(result.diff)
                print(f"      {before}\n   -> {after}", flush=True)

        # cosmic-ray's HTTP client gives up after 5 minutes by default, before a mutant's
        # own timeout: the latter is the one bound.
        aiohttp.client.DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)
        asyncio.set_event_loop(asyncio.new_event_loop())
        HttpDistributor()(
            pending, command, timeout, {"worker-urls": list(urls)}, on_task_complete=on_complete
        )
        (WORK / f"{name}.seconds").write_text(f"{time.monotonic() - began:.0f}")


# -- the report ------------------------------------------------------------------------------

COLUMNS = ("mutants", "killed", "timed out", "survived", "kill rate", "skipped", "time")


def row(label: str, found: list[Outcome], seconds: str = "") -> str:
    counts = Counter(o.verdict for o in found)
    survived = counts["survived"] + counts["not run"]
    caught = counts["killed"] + counts["timed out"]
    tried = caught + survived
    rate = f"{100 * caught / tried:.1f}%" if tried else "-"
    cells = (tried + counts["error"], counts["killed"], counts["timed out"], survived, rate)
    extra = f" ({counts['not run']} not run)" if counts["not run"] else ""
    errors = f", {counts['error']} errors" if counts["error"] else ""
    return (
        f"{label:44} {cells[0]:>7} {cells[1]:>6} {cells[2]:>9} {cells[3]:>8} {cells[4]:>9} "
        f"{counts['skipped']:>7} {seconds:>6}{extra}{errors}"
    )


def report(names: list[str]) -> str:
    lines = [f"{'target / file':44} " + " ".join(f"{c:>{max(6, len(c))}}" for c in COLUMNS)]
    everything: list[Outcome] = []
    survivors: list[Outcome] = []
    total_seconds = 0
    for name in names:
        session = WORK / f"{name}.sqlite"
        if not session.exists():
            continue
        found = outcomes(session)
        everything.extend(found)
        seconds_file = WORK / f"{name}.seconds"
        seconds = seconds_file.read_text() if seconds_file.exists() else ""
        total_seconds += int(seconds or 0)
        lines.append(row(name, found, f"{seconds}s" if seconds else ""))
        for path in sorted({o.path for o in found}):
            lines.append(row(f"  {path}", [o for o in found if o.path == path]))
        survivors.extend(o for o in found if o.verdict in ("survived", "not run", "error"))
    lines.append(row("total", everything, f"{total_seconds}s"))
    lines.append("")
    lines.append(f"survivors ({len(survivors)}):")
    for o in sorted(survivors, key=lambda o: (o.path, o.line, o.operator)):
        lines.append(f"  {o.path}:{o.line} {o.operator} [{o.verdict}]")
        lines.append(f"      {o.before}")
        lines.append(f"   -> {o.after}")
    return "\n".join(lines)


def run(names: list[str], jobs: int, *, again: bool = False) -> None:
    """Run the targets' mutants; ``again``: only those the last run did not kill."""
    began = time.monotonic()
    # Stopped from outside: still stop the workers and remove the copies.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.nice(0) < NICENESS:
        os.nice(NICENESS - os.nice(0))
    WORK.mkdir(exist_ok=True)
    if again:
        # Tests added since cannot let a killed mutant live: only the code must be the same.
        for name in names:
            for file in target_files(TARGETS[name]):
                if not (WORK / f"{name}.sqlite").exists() or (
                    (WORK / "pristine" / file).read_bytes() != (REPO / file).read_bytes()
                ):
                    raise SystemExit(f"{file} changed since the last run: run them all again")
        report_file = WORK / "report.txt"
        if report_file.exists():
            shutil.copy(report_file, WORK / "report-before.txt")
    shutil.rmtree(WORK / "pristine", ignore_errors=True)
    copy_tree(WORK / "pristine")
    copies = [WORK / f"copy-{n}" for n in range(1, jobs + 1)]
    for copy in copies:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(WORK / "pristine", copy)
    try:
        # Which tests run which lines, and the baseline: each target's tests, in a copy.
        timeouts: dict[str, float] = {}
        queue = list(names)
        while queue:
            batch, queue = queue[:jobs], queue[jobs:]
            running = [
                (
                    name,
                    subprocess.Popen(
                        [sys.executable, "-m", "tests.mutation", "map", name, str(WORK)],
                        cwd=copy,
                        env=quiet_env(),
                        stdout=(WORK / f"{name}.map.log").open("wb"),
                        stderr=subprocess.STDOUT,
                    ),
                )
                for name, copy in zip(batch, copies, strict=False)
            ]
            for name, process in running:
                if process.wait() != 0:
                    raise SystemExit(
                        f"{name}: the tests fail before any mutation; see {name}.map.log"
                    )
                seconds = json.loads((WORK / f"{name}.map.json").read_text())["seconds"]
                # Under coverage the tests run slower than a mutant's: twice that is generous.
                timeouts[name] = max(60.0, 2 * seconds)
                print(f"{name}: tests mapped in {seconds:.0f} s", flush=True)
        with workers(copies) as urls:
            for name in names:
                mutate(name, urls, timeouts[name], again=again)
    finally:
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
    text = report(list(TARGETS)) + f"\n\nrun time: {time.monotonic() - began:.0f} s\n"
    (WORK / "report.txt").write_text(text)
    print("\n" + text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The internal commands, run in a copy: ``map TARGET WORK`` and ``test TARGET WORK``.
    if argv[:1] == ["map"]:
        return map_lines(argv[1], Path(argv[2]) / f"{argv[1]}.map.json")
    if argv[:1] == ["test"]:
        return run_mutant_tests(argv[1], Path(argv[2]))
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--jobs", type=int, default=MAX_JOBS, help=f"at most {MAX_JOBS}")
    parser.add_argument("--report", action="store_true", help="print the last run's report")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants the last run did not kill (after adding tests; the "
        "code must be unchanged); its report is kept as report-before.txt",
    )
    args = parser.parse_args(argv)
    unknown = set(args.targets) - TARGETS.keys()
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; choose among {list(TARGETS)}")
    if args.report:
        print(report(list(TARGETS)))
        return 0
    os.chdir(REPO)
    run(
        list(args.targets) or list(TARGETS),
        max(1, min(args.jobs, MAX_JOBS)),
        again=args.survivors,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
