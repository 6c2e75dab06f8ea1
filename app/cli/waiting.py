"""Waiting for a task to end: a live status line on a terminal, and a word at once when no
live worker serves the task's service (the task would wait in its queue in silence)."""

from __future__ import annotations

import time

import click

from app.cli.context import CliState
from app.cli.terminal import Spinner, shows_progress
from app.sdk import CeleriacError, Client, Task, TaskTimeout

#: Seconds between reads of the task: short at first (most tasks end within milliseconds),
#: doubling up to the cap, a pace at which a person sees each change of status.
FIRST_POLL = 0.05
POLL_CAP = 0.25
#: Seconds between two drawings of the status line.
SPIN = 0.1
#: A task still queued this long after it was sent makes the CLI read its service's live
#: workers. If none, it reads them once more after WORKER_RECHECK before it says so: the
#: registry hears of a worker from its first heartbeat, a moment after the worker starts
#: (on an embedded server, just after a deployment is made).
WORKER_CHECK = 0.3
WORKER_RECHECK = 0.5


class WorkerCheck:
    """Looks, while a task is queued, whether a live worker serves its service; if none,
    says so once, with the command that starts one."""

    def __init__(self, state: CliState, deployment: str) -> None:
        self._state = state
        self._deployment = deployment
        self._due = WORKER_CHECK
        self._misses = 0
        #: True once there is nothing more to look at (the worker is there, the task left
        #: its queue, or the notice was given).
        self.settled = False

    def step(self, client: Client, task: Task, elapsed: float) -> str | None:
        """Look if it is time (``elapsed`` seconds since the task was sent); the notice to
        print if no live worker serves the task."""
        if self.settled or task.status != "queued":
            self.settled = True
            return None
        if elapsed < self._due:
            return None
        try:
            services = client.deployments.services(self._deployment)
        except CeleriacError:
            self.settled = True  # the registry is out of reach or not allowed: say nothing
            return None
        if any(s.workers for s in services if s.name == task.service_id):
            self.settled = True
            return None
        self._misses += 1
        if self._misses < 2:
            self._due = elapsed + WORKER_RECHECK
            return None
        self.settled = True
        start = self._state.command(
            "worker", "--deployment", self._deployment, "--service", task.service_id
        )
        return (
            f"Task {task.task_id} is queued, but no live worker serves service "
            f"{task.service_id!r} of deployment {self._deployment!r}; it waits until one "
            f"starts (on a host with the broker's settings):\n  {start}"
        )


def look_for_workers(state: CliState, client: Client, deployment: str, task: Task) -> None:
    """Before following a task's events: say at once if no live worker serves it (this
    waits a second at most, and only while the task is queued)."""
    check = WorkerCheck(state, deployment)
    started = time.monotonic()
    delay = FIRST_POLL
    while True:
        notice = check.step(client, task, time.monotonic() - started)
        if notice:
            click.echo(notice, err=True)
        if check.settled or task.done:
            return
        time.sleep(delay)
        delay = min(delay * 2, POLL_CAP)
        task = client.tasks.get(deployment, task.task_id)


def wait_for_end(
    state: CliState, client: Client, deployment: str, task: Task, *, timeout: float | None
) -> Task:
    """Wait for a task to end and return it: on a terminal with a status line on stderr
    (status and time elapsed); otherwise quietly. ``timeout`` (seconds; None: no limit)
    ends the wait, not the task."""
    started = time.monotonic()
    check = WorkerCheck(state, deployment)
    spinner = Spinner(f"task {task.task_id}", started) if shows_progress() else None
    delay = FIRST_POLL
    try:
        if spinner is None:
            # Nothing to draw: the event stream says at once when a quick task ends.
            first = WORKER_CHECK if timeout is None else min(WORKER_CHECK, timeout)
            ended = _wait_on_stream(client, deployment, task, first)
            task = ended or client.tasks.get(deployment, task.task_id)
        while not task.done:
            elapsed = time.monotonic() - started
            notice = check.step(client, task, elapsed)
            if notice:
                if spinner:
                    spinner.clear()
                click.echo(notice, err=True)
            if timeout is not None and elapsed >= timeout:
                raise _still_running(state, deployment, task, timeout)
            if spinner is None and check.settled:
                left = None if timeout is None else timeout - elapsed
                task = _wait_on_stream(client, deployment, task, left) or task
                if not task.done:
                    raise _still_running(state, deployment, task, timeout or 0.0)
                break
            _pause(delay, spinner, task, started)
            delay = min(delay * 2, POLL_CAP)
            task = client.tasks.get(deployment, task.task_id)
        return task
    except KeyboardInterrupt:
        if spinner:
            spinner.clear()
        watch = state.command("tasks", "watch", "-d", deployment, task.task_id)
        click.echo(f"Stopped waiting; task {task.task_id} runs on: {watch}", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        if spinner:
            spinner.clear()


def _pause(seconds: float, spinner: Spinner | None, task: Task, started: float) -> None:
    """Sleep ``seconds``, drawing the status line meanwhile if there is one."""
    if spinner is None:
        time.sleep(seconds)
        return
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        spinner.show(_status(task), time.monotonic())
        time.sleep(min(left, SPIN))


def _status(task: Task) -> str:
    """The status as the line shows it: a retrying task says when it runs again."""
    if task.status == "retrying" and task.retry_at is not None:
        return f"retrying at {task.retry_at.astimezone().strftime('%H:%M:%S')}"
    return task.status.replace("_", " ")


def _wait_on_stream(
    client: Client, deployment: str, task: Task, seconds: float | None
) -> Task | None:
    """Follow the task's event stream to its end (``seconds`` at most: None, no limit), then
    read the task; None if it had not ended by then."""
    try:
        with client.tasks.events(deployment, task.task_id, timeout=seconds) as events:
            for _ in events:
                pass
    except TaskTimeout:
        return None
    return client.tasks.get(deployment, task.task_id)


def _still_running(
    state: CliState, deployment: str, task: Task, timeout: float
) -> click.ClickException:
    watch = state.command("tasks", "watch", "-d", deployment, task.task_id)
    cancel = state.command("tasks", "cancel", "-d", deployment, task.task_id)
    return click.ClickException(
        f"task {task.task_id} has not ended after {timeout:g} s; it runs on. "
        f"Follow it with {watch}, or stop it with {cancel}"
    )
