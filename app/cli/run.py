"""``celeriac run``: run a task and print its result, with its progress on a terminal."""

from __future__ import annotations

import click

from app.cli.completion import deployment_option
from app.cli.context import CliState, pass_state, reporting_errors
from app.cli.failures import report
from app.cli.following import follow
from app.cli.waiting import look_for_workers, wait_for_end
from app.sdk import MultitaskStrategy

#: ``--traceback`` of the commands that show a task's error.
traceback_option = click.option(
    "--traceback",
    "show_traceback",
    is_flag=True,
    help="If the task failed, print the whole traceback (the server shows it to admin "
    "tokens), not only the workflow's own frame.",
)


@click.command()
@deployment_option
@click.option(
    "-a",
    "--arg",
    "args",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="A keyword argument of the run (repeatable; values are strings).",
)
@click.option("-S", "--service", help="Service id [default: the deployment's default-service].")
@click.option("-i", "--session-id", help="Run in this session.")
@click.option(
    "--multitask-strategy",
    type=click.Choice(["enqueue", "reject"]),
    help="If the session is busy: queue the task [default] or refuse it.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Print each event as it arrives (type, JSON), then the result; answer the "
    "task's questions.",
)
@click.option(
    "--timeout",
    type=float,
    help="Seconds to wait for the result [default: the HTTP timeout; with --stream: none].",
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Run the task at most once under KEY: the same run again under it (after a lost "
    "answer) gets the first run's task and result.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(0, min_open=True),
    metavar="SECONDS",
    help="Stop the task's run after SECONDS (it ends timed_out) [default: the service's].",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0, min_open=True),
    metavar="SECONDS",
    help="End the task timed_out if it has not started within SECONDS [default: the service's].",
)
@traceback_option
@pass_state
def run(
    state: CliState,
    deployment: str,
    args: tuple[tuple[str, str], ...],
    service: str | None,
    session_id: str | None,
    multitask_strategy: MultitaskStrategy | None,
    stream: bool,
    timeout: float | None,
    idempotency_key: str | None,
    time_limit: float | None,
    queue_timeout: float | None,
    show_traceback: bool,
) -> None:
    """Run a task and print its result.

    On a terminal a line on stderr shows the task's status and the time elapsed; the result
    alone goes to stdout. A task that does not succeed prints its error and where the
    workflow raised it, and exits 1.
    """
    with reporting_errors(), state.client() as client:
        task = client.tasks.create(
            deployment,
            dict(args),
            service=service,
            session_id=session_id,
            multitask_strategy=multitask_strategy,
            idempotency_key=idempotency_key,
            time_limit=time_limit,
            queue_timeout=queue_timeout,
            # A run outside a session is one task: it opens none (as tasks/run would not)
            standalone=session_id is None,
        )
        if stream:
            look_for_workers(state, client, deployment, task)
            task = follow(state, client, deployment, task.task_id, timeout=timeout)
        else:
            limit = timeout if timeout is not None else state.timeout
            task = wait_for_end(state, client, deployment, task, timeout=limit)
    report(task, traceback=show_traceback)
