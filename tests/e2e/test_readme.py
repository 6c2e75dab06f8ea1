"""The README, followed as a newcomer follows it: every command of its walkthrough, in order,
as written, in a fresh copy of the clone, on a terminal.

The embedded part (sections "Quick start" and "Using it") runs on the embedded server, in the
copy's own fresh data folder (``./.celeriac``); the distributed part ("Run distributed") on
the machine's Redis and PostgreSQL (skipped without them, failed under ``CI=true``). How the
README's blocks are read (``$`` transcripts, ``# keeps running:``, ``# install:``, ``<!-- not
run: ... -->``) is in :mod:`tests.support.readme`, and in the README's "Tests" section.

What the test changes, and why (it says so in each failure):

- The shell starts with the venv *off* its ``PATH``: the README must activate it.
- The README's port, 4501, may be taken on a shared machine: the test runs on a free port,
  given to the commands as ``CELERIAC_PORT`` and ``CELERIAC_SERVER`` (the settings the
  README's bare commands read), and replaces ``127.0.0.1:4501`` where the README writes it
  out (URLs in Python and ``curl``, and the output shown).
- The distributed part's Redis database ``0`` and PostgreSQL database ``celeriac`` are the
  machine's, shared: the test replaces them with a Redis database nobody uses and a
  PostgreSQL database of its own, dropped after; and it fails if a command still names
  another broker or database.
- ``# install:`` lines are not run: the test runs in the venv they install (listed in the
  test's output).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import POSTGRES, admin_connection, free_redis_database, require_service
from tests.support.processes import (
    READY_TIMEOUT,
    Process,
    Processes,
    free_port,
    poll,
    unavailable,
)
from tests.support.readme import (
    Kind,
    ReadmeError,
    Step,
    difference,
    shown_in_order,
    walkthrough,
)
from tests.support.shell import CommandTimeout, Shell

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
EMBEDDED = ("Quick start", "Using it")
DISTRIBUTED = ("Run distributed",)
#: The README's port, replaced by the test's where the README writes it out.
README_ADDRESS = "127.0.0.1:4501"
#: The distributed part's broker and database, as the README names them.
README_REDIS = "redis://127.0.0.1:6379/0"
README_DATABASE_URL = "postgres@127.0.0.1/celeriac"
README_CREATEDB = "-U postgres celeriac"
#: What a command left out as ``# install:`` may be: making the venv, or pip installing into it.
_INSTALL = re.compile(r"(python3 -m venv \.venv && )?(\.venv/bin/)?pip install [^;&|]+")
#: Seconds one command may take (a task's run, a Python block's).
COMMAND_TIMEOUT = 60.0


class Walk:
    """Runs a walkthrough's steps in one shell, the background ones as the test's processes,
    and keeps a transcript for the failure messages."""

    def __init__(self, shell: Shell, processes: Processes, scratch: Path) -> None:
        self.shell = shell
        self.processes = processes
        self.scratch = scratch
        self.transcript: list[str] = []
        self.skipped: list[Step] = []
        self.started: list[tuple[Step, Process]] = []

    def run(self, steps: Sequence[Step]) -> None:
        """Every step, in order; fail at the first command that fails or prints otherwise
        than the README shows."""
        for step in steps:
            if step.kind is Kind.INSTALL:
                self.skipped.append(step)
                self.transcript.append(f"# {step.where()}: not run (install): {step.text}")
            elif step.kind is Kind.KEEPS_RUNNING:
                self._start(step)
            else:
                self._run(step)
            self._still_running()

    def _still_running(self) -> None:
        """Fail if a command the README shows as one that keeps running has stopped (it may
        stop right after its ready line, while the walk goes on)."""
        for step, process in self.started:
            if not process.alive():
                self.fail(step, f"it exited with {process.popen.returncode}")

    def _run(self, step: Step) -> None:
        if step.kind is Kind.PYTHON:
            source = self.scratch / f"readme_{step.line}.py"
            source.write_text(step.text)
            command = f"python {source}"
        else:
            command = step.text
        try:
            ran = self.shell.run(command, answers=step.output or (), timeout=COMMAND_TIMEOUT)
        except CommandTimeout as exc:
            self.fail(step, str(exc))
        self.transcript.append(f"$ {command}  # {step.where()}, exit {ran.status}")
        self.transcript += ran.printed
        if ran.status != 0:
            self.fail(step, f"it exited with {ran.status}")
        if step.output is not None and (wrong := difference(step.output, ran.printed)):
            shown = "\n".join(step.output)
            self.fail(step, f"{wrong}\n--- the README shows:\n{shown}")

    def _start(self, step: Step) -> None:
        """Start a command that keeps running; wait until it printed what the README shows."""
        env = self.shell.env | {"PYTHONUNBUFFERED": "1"}  # its log is a file, not a terminal
        name = f"readme-{step.line}"
        process = self.processes.start(name, ["bash", "-c", step.text], env, cwd=self.shell.cwd)
        self.transcript.append(f"$ {step.text}  # {step.where()}, in the background: {name}")
        self.started.append((step, process))
        shown = step.output or ()

        def ready() -> bool:
            if not process.alive():
                self.fail(step, f"it exited with {process.popen.returncode}")
            return shown_in_order(shown, process.output().splitlines())

        poll(ready, bool, READY_TIMEOUT, f"{step.where()}: {step.text!r} printing {shown!r}")

    def fail(self, step: Step, why: str) -> NoReturn:
        """Fail the test at ``step``, with the walk so far and the background processes' logs."""
        tail = "\n".join(self.transcript[-40:])
        pytest.fail(
            f"{step.where()}: {step.text!r}: {why}\n--- the walk so far (last lines):\n{tail}"
            f"\n--- background processes:{self.processes.report()}",
            pytrace=False,
        )


def replaced(steps: Sequence[Step], substitutions: Mapping[str, str]) -> list[Step]:
    """The steps with the test's substitutions, each of which must be used: if the README no
    longer writes what the test replaces, the test must follow it (and never run on shared
    names)."""
    for old in substitutions:
        if not any(old in step.text or old in "\n".join(step.output or ()) for step in steps):
            pytest.fail(f"no step of the README writes {old!r}: update tests/e2e/test_readme.py")
    return [step.replaced(substitutions) for step in steps]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh copy of the clone: the files git tracks, and ``.venv``, the test's venv."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        unavailable(f"the README activates .venv: run the tests in a venv ({venv} is none)")
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        unavailable(f"{REPO} is not a git checkout: the copy of the clone takes its tracked files")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    copy = tmp_path / "clone"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # (a tracked file deleted in the working tree is not copied)
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to(venv)
    return copy


def shell_env(tmp_path: Path, port: int) -> dict[str, str]:
    """A newcomer's environment: no Celeriac settings, the venv not active; the test's port."""
    venv_bin = {str(Path(sys.prefix) / "bin"), str((Path(sys.prefix) / "bin").resolve())}
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CELERIAC_") and name not in {"VIRTUAL_ENV", "PYTHONPATH"}
    }
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p and p not in venv_bin)
    env |= {
        "CELERIAC_PORT": str(port),
        "CELERIAC_SERVER": f"http://127.0.0.1:{port}",
        # The CLI's profiles (a current profile names a server) stay the test's own.
        "CELERIAC_CONFIG": str(tmp_path / "profiles.yml"),
        "TERM": "xterm",
    }
    return env


@contextlib.contextmanager
def own_postgres_database() -> Iterator[str]:
    """The name of a PostgreSQL database that does not exist yet (the README creates it),
    dropped on the way out."""
    require_service("PostgreSQL", *POSTGRES)
    name = f"celeriac_readme_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def walk(
    clone: Path, tmp_path: Path, processes: Processes, steps: Sequence[Step], port: int
) -> Walk:
    """Walk ``steps`` in a new shell in ``clone``, with ``port`` for the server; the walk,
    for its record."""
    shell = Shell(clone, shell_env(tmp_path, port), tmp_path / "shell")
    done = Walk(shell, processes, tmp_path)
    try:
        done.run(steps)
    finally:
        print("\n".join(done.transcript))  # shown with the test's output (-rP, or a failure)
    return done


def only_installs_skipped(done: Walk) -> None:
    """Only ``pip install`` commands were left out (the test runs in the venv they make):
    the marker hides nothing else."""
    assert done.skipped, "the README installs nothing: where does the reader's venv come from?"
    for step in done.skipped:
        assert _INSTALL.fullmatch(step.code), f"{step.where()}: only pip installs are skipped"


def twice(steps: Sequence[Step]) -> list[Step]:
    """The steps, each Python block run a second time right after the first: a reader may run
    a snippet again, and it must not collide with itself."""
    return [again for step in steps for again in ([step] * (2 if step.kind is Kind.PYTHON else 1))]


def test_embedded_walkthrough(clone: Path, tmp_path: Path, processes: Processes) -> None:
    """Quick start and Using it: the embedded server, the CLI, curl, the SDK, LlamaIndex's
    workflow client."""
    port = free_port()
    steps = walkthrough(README.read_text(), EMBEDDED)
    assert any(step.kind is Kind.PYTHON for step in steps), "Using it shows no Python"
    steps = replaced(steps, {README_ADDRESS: f"127.0.0.1:{port}"})
    done = walk(clone, tmp_path, processes, twice(steps), port)
    only_installs_skipped(done)


def shared_names(step: Step, redis_url: str, database: str) -> list[str]:
    """Brokers and databases a command names other than the test's own."""
    code = step.code
    named = re.findall(r"(?:amqp|sqs|redis)://[^\s'\"]*", code)
    named += re.findall(r"postgres(?:ql)?[+\w]*://[^\s'\"]*", code)
    wrong = [url for url in named if url != redis_url and not url.endswith(f"/{database}")]
    if re.search(r"\b(createdb|dropdb|psql)\b", code) and database not in code:
        wrong.append(code)
    return wrong


def test_distributed_walkthrough(clone: Path, tmp_path: Path, processes: Processes) -> None:
    """Run distributed: the API server, the control plane's consumer and service workers as
    processes of their own on Redis and PostgreSQL, with tokens."""
    if shutil.which("createdb") is None:
        unavailable("createdb is not installed (PostgreSQL's client programs)")
    with free_redis_database() as redis_url, own_postgres_database() as database:
        port = free_port()
        substitutions = {
            README_ADDRESS: f"127.0.0.1:{port}",
            README_REDIS: redis_url,
            README_DATABASE_URL: f"postgres@127.0.0.1/{database}",
            README_CREATEDB: f"-U postgres {database}",
        }
        steps = replaced(walkthrough(README.read_text(), DISTRIBUTED), substitutions)
        for step in steps:
            if step.kind is not Kind.INSTALL and (wrong := shared_names(step, redis_url, database)):
                pytest.fail(f"{step.where()} names the machine's shared {wrong}: substitute it")
        try:
            done = walk(clone, tmp_path, processes, steps, port)
        finally:
            processes.kill_all()  # before the database is dropped and Redis flushed
    only_installs_skipped(done)


# -- the convention itself: a walk fails when the README is wrong ---------------------------------

FAKE_README = """\
## Quick start

```sh
$ . .venv/bin/activate
$ echo hello
hello
$ read -p "Your name? " name && echo "Hi $name"
Your name? Ada
Hi Ada
$ GREETING=hi
$ echo "$GREETING from $(pwd)"
hi from ...
$ (echo starting; sleep 0.5; echo ready; exec sleep 60)    # keeps running: use another terminal
ready
$ printf 'a\\rb\\n'
b
```

```python
print("two" + "words")  # twowords
```
"""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (None, None),
        (("\nhello\n", "\nbye\n"), "the README shows 'bye', the command printed 'hello'"),
        (("$ echo hello", "$ echo hello; false"), "it exited with 1"),
        (("# twowords", "# two words"), "the README shows 'two words'"),
        (("hi from ...", "hi from ...\nmore"), "the README shows 2 lines, the command printed 1"),
        (("exec sleep 60", "exit 3"), "it exited with 3"),
    ],
)
def test_a_walk_holds_to_what_the_readme_shows(
    tmp_path: Path, processes: Processes, change: tuple[str, str] | None, why: str | None
) -> None:
    """A command that fails, or prints otherwise than shown, fails the walk; prompts are
    answered, variables kept, lines rewritten in place read as the terminal shows them."""
    markdown = FAKE_README if change is None else FAKE_README.replace(*change)
    steps = walkthrough(markdown, ["Quick start"])
    (tmp_path / ".venv").symlink_to(sys.prefix)  # its python runs the Python block
    if why is None:
        walk(tmp_path, tmp_path, processes, steps, free_port())
        return
    with pytest.raises(pytest.fail.Exception, match=re.escape(why)):
        walk(tmp_path, tmp_path, processes, steps, free_port())


def test_the_readme_blocks_are_read_by_the_convention() -> None:
    """Which blocks and lines are steps, and of what kind; a server shown without its ready
    line is refused (the walk could not tell when to go on)."""
    markdown = """\
## Quick start

```sh
pip install -e .    # install: once
celeriac deploy a.yml \\
  --reload          # a comment, not a marker
```

<!-- not run: a fragment -->
```python
print(token)
```

```yaml
key: value
```

## Tests

```sh
pytest
```
"""
    steps = walkthrough(markdown, ["Quick start"])
    assert [(s.line, s.kind, s.code) for s in steps] == [
        (4, Kind.INSTALL, "pip install -e ."),
        (5, Kind.RUN, "celeriac deploy a.yml \\\n  --reload"),
    ]
    assert steps[1].output is None
    with pytest.raises(ReadmeError, match=re.escape("README.md:3: a command that keeps running")):
        walkthrough(
            "## S\n```sh\n$ celeriac serve   # keeps running: use another terminal\n```\n", ["S"]
        )
    with pytest.raises(ReadmeError, match="no section"):
        walkthrough(markdown, ["Run distributed"])
