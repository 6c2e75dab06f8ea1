"""Processes a test (or the soak script) starts: each logs to a file and is killed at the end.

Also the waiting helper every such test uses, and the way a missing program or package is
reported: skipped on a laptop, failed under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

from tests.conftest import in_ci

#: How long a process may take to answer after it starts (imports take a few seconds here).
READY_TIMEOUT = 45.0
#: How long a process may take to exit after SIGTERM.
STOP_TIMEOUT = 20.0

T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing service or package; under ``CI=true`` fail it instead."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true needs every service and package (.ci/services)")
    pytest.skip(reason)


def require_module(name: str) -> ModuleType:
    """Import an optional package (a broker's client, Flower), or skip (fail in CI) without it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"the Python package {name} is not installed ({exc})")


def free_port() -> int:
    """A local TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(probe: Callable[[], T], until: Callable[[T], bool], timeout: float, what: str) -> T:
    """Call ``probe`` until ``until(value)`` holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not there after {timeout:g} s; last value {value!r}")
        time.sleep(0.1)


class Process:
    """A process started by a test, with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, popen: subprocess.Popen[bytes]):
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.popen = popen

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def output(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """Send SIGTERM (a warm shutdown) and wait for the exit; fail if it takes too long."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running {timeout:g} s after SIGTERM:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the process and everything it started, then reap it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT)


class Processes:
    """Starts processes logging into one folder, and kills every one of them at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Process] = []

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> Process:
        """Start ``argv`` in a session of its own, stdout and stderr to ``<name>.log``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        count = sum(1 for p in self.started if p.name == name)
        log = self.folder / (f"{name}.log" if count == 0 else f"{name}.{count + 1}.log")
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd or self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, argv, log, popen)
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        """Kill every process still running (newest first)."""
        for process in reversed(self.started):
            process.kill()

    def logs(self, tail: int = 60) -> list[tuple[str, str]]:
        """The last ``tail`` lines of each process's log, with a title."""
        sections = []
        for process in self.started:
            lines = process.output().splitlines()[-tail:]
            code = process.popen.poll()
            state = "running" if code is None else f"exit {code}"
            title = f"{process.log.name} ({state}): {' '.join(process.argv)}"
            sections.append((title, "\n".join(lines)))
        return sections

    def report(self) -> str:
        """Every log tail as one text, for failure messages."""
        return "".join(f"\n----- {title}\n{text}" for title, text in self.logs())
