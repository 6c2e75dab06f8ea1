"""Shell completion: deployment names for ``-d/--deployment`` and ``NAME`` arguments.

Click completes commands and options by itself (``_CELERIAC_COMPLETE=bash_source celeriac``,
see the README); the names of deployments come from the server chosen by the global options
given so far. Completion must never get in the way: on any error, or a server slower than
:data:`COMPLETION_TIMEOUT`, it completes nothing and prints nothing.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from app.cli.profiles import resolve_state

#: Seconds a completion waits for the server at most.
COMPLETION_TIMEOUT = 0.5


def deployment_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The names of the server's deployments that start with ``incomplete``."""
    given = ctx.find_root().params
    try:
        state = resolve_state(
            given.get("server"), given.get("profile"), COMPLETION_TIMEOUT, given.get("token")
        )
        with state.client() as client:
            names = [deployment.name for deployment in client.deployments.list()]
    except Exception:  # whatever went wrong, a shell completes nothing
        return []
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


#: ``-d/--deployment NAME``, required, completed from the server.
deployment_option = click.option(
    "-d",
    "--deployment",
    required=True,
    help="Deployment name.",
    shell_complete=deployment_names,
)
