"""``celeriac init NAME``: a deployment folder to start from, which deploys and runs as made.

It holds ``deployment.yml`` (LlamaDeploy's format, one local service), ``src/workflow.py``
(a workflow of one step) and a ``README.md`` that says how to deploy and run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import click
import yaml

#: The one service of a new deployment, and the workflow it runs.
SERVICE = "hello"
WORKFLOW_PATH = "workflow:hello_workflow"

_DEPLOYMENT = Template("""\
# $name: a Celeriac deployment, in LlamaDeploy's format.
name: $name_yaml

control-plane: {}

default-service: $service

services:
  $service:
    name: Hello
    source:
      type: local
      name: ./src
    path: $path
""")

_WORKFLOW = '''\
"""The workflow of the service ``hello``: one step that greets whom it is asked to."""

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class HelloWorkflow(Workflow):
    """Greet the ``name`` a run is given (``celeriac run ... -a name World``)."""

    @step
    async def greet(self, ev: StartEvent) -> StopEvent:
        """The greeting is the run's result."""
        name = ev.get("name", "world")
        return StopEvent(result=f"Hello, {name}!")


hello_workflow = HelloWorkflow(timeout=60)
'''

_README = Template("""\
# $name

A Celeriac deployment: `celeriac deploy deployment.yml`, then
`celeriac run -d $name -a name World`. Its workflow is `src/workflow.py`.
""")


@click.command("init")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to make it in (new, or empty) [default: ./NAME].",
)
def init(name: str, folder: Path | None) -> None:
    """Make a deployment folder NAME: a deployment file, a workflow, a README."""
    _check_name(name)
    folder = folder if folder is not None else Path(name)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise click.ClickException(
            f"{folder} exists and is not an empty folder; give another NAME, or --dir PATH"
        )
    name_yaml = name if yaml.safe_load(name) == name else json.dumps(name)
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "deployment.yml").write_text(
        _DEPLOYMENT.substitute(name=name, name_yaml=name_yaml, service=SERVICE, path=WORKFLOW_PATH)
    )
    (folder / "src" / "workflow.py").write_text(_WORKFLOW)
    (folder / "README.md").write_text(_README.substitute(name=name))
    click.echo(f"Made deployment {name} in {folder}/. Deploy and run it:")
    click.echo(f"  celeriac deploy {folder / 'deployment.yml'}")
    click.echo(f"  celeriac run -d {name} -a name World")


def _check_name(name: str) -> None:
    """Refuse a name no deployment may have, with the deployment file's own rule."""
    from config.deployment import load_deployment_mapping
    from config.errors import DeploymentSpecError

    probe = {
        "name": name,
        "control-plane": {},
        "services": {SERVICE: {"name": "Hello", "path": WORKFLOW_PATH}},
    }
    try:
        load_deployment_mapping(probe)
    except DeploymentSpecError as exc:
        reasons = exc.errors.get("name")
        if reasons:
            raise click.BadParameter(" ".join(reasons), param_hint="NAME") from exc
        raise  # the probe's other fields are this module's: a mistake here, not the user's
