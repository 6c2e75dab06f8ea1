"""A worker without the ``llama-index`` extra fails a llama-index workflow's task, naming the extra.

The test builds a real virtual environment that holds every package of the running one but
llama-index-core (symbolic links to the same files), and runs a service runtime in it, as a
worker installed with ``pip install celeriac`` alone would.
"""

from __future__ import annotations

import json
import subprocess
import sysconfig
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from config.deployment import SourceLayout, load_deployment
from tests.workers.conftest import write_file
from workers.errors import WorkflowLoadError
from workers.loader import load_workflow


def from_llama_index_core(entry: str) -> bool:
    """Whether a site-packages entry is llama-index-core's: its package or its metadata (not
    llama_index_instrumentation, which llama-index-workflows needs)."""
    return entry == "llama_index" or entry.startswith("llama_index_core-")


DEPLOYMENT = """\
name: Dep
control-plane: {}
services:
  legacy:
    name: llama-index-core workflow
    source: {type: local, name: ./legacy}
    path: workflow:wf
  current:
    name: llama-index-workflows workflow
    source: {type: local, name: ./current}
    path: workflow:wf
"""

WORKFLOW = """\
{imports}


class Answer(Workflow):
    @step
    async def answer(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="ran")


wf = Answer(timeout=10)
"""

LEGACY_IMPORTS = "from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step"
CURRENT_IMPORTS = (
    "from workflows import Workflow, step\nfrom workflows.events import StartEvent, StopEvent"
)

#: Runs one step of each service in a service runtime; prints each outcome as JSON.
RUN_BOTH = """\
import json, sys, uuid
from pathlib import Path

from config.deployment import load_deployment_file
from workers.protocol import RunStep
from workers.runtime import ServiceRuntime


class Quiet:
    def started(self, message): pass
    def event(self, message): pass
    def finished(self, message): pass


root = Path(sys.argv[1])
runtime = ServiceRuntime(root / "sources", worker_name="no-extra")
runtime.install(load_deployment_file(root / "deployment.yml"), root)
outcomes = {}
try:
    for service in ("legacy", "current"):
        step = RunStep(task_id=uuid.uuid4().hex, session_id=None, deployment="Dep",
                       service=service, input={})
        outcome = runtime.run(step, Quiet())
        outcomes[service] = {"ok": outcome.ok, "result": outcome.result, "error": outcome.error}
finally:
    runtime.close()
print(json.dumps(outcomes))
"""


def environment_without(folder: Path, absent: Callable[[str], bool]) -> Path:
    """A virtual environment in ``folder`` with this one's site-packages entries but those
    ``absent`` names; its Python."""
    venv.EnvBuilder(symlinks=True, with_pip=False).create(folder)
    python = folder / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    sources = {Path(sysconfig.get_path(kind)) for kind in ("purelib", "platlib")}
    for source in sorted(sources):
        for entry in source.iterdir():
            link = target / entry.name
            if not absent(entry.name) and not link.exists():
                link.symlink_to(entry)
    return python


def test_a_llama_index_workflow_fails_its_task_naming_the_extra(tmp_path: Path) -> None:
    # Given a Python environment like this one, but without llama-index-core
    python = environment_without(tmp_path / "venv", from_llama_index_core)
    probe = "import importlib.util as u; print(u.find_spec('llama_index') is None)"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "True", found.stderr
    # And a deployment with a workflow on llama_index.core and one on the workflows package
    project = tmp_path / "project"
    write_file(project / "deployment.yml", DEPLOYMENT)
    write_file(project / "legacy" / "workflow.py", WORKFLOW.format(imports=LEGACY_IMPORTS))
    write_file(project / "current" / "workflow.py", WORKFLOW.format(imports=CURRENT_IMPORTS))
    # When a service runtime in that environment runs a step of each
    done = subprocess.run(
        [str(python), "-c", RUN_BOTH, str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    # Then the llama-index workflow's task failed, saying what to install
    legacy = outcomes["legacy"]
    assert legacy["ok"] is False
    assert legacy["error"]["type"] == "workers.errors.WorkflowLoadError"
    assert legacy["error"]["message"] == (
        "service 'legacy': this workflow imports llama_index.core, which is not installed: "
        "pip install 'celeriac[llama-index]'"
    )
    # And the same worker runs a workflow that needs only llama-index-workflows
    assert outcomes["current"] == {"ok": True, "result": "ran", "error": None}


@pytest.mark.llama_index
def test_a_module_that_llama_index_core_lacks_is_not_blamed_on_the_extra(tmp_path: Path) -> None:
    # Given llama-index-core installed, and a workflow importing a module it does not have
    write_file(tmp_path / "src" / "workflow.py", "import llama_index.core.no_such_module\n")
    spec = load_deployment(DEPLOYMENT)
    # When the worker loads it
    with pytest.raises(WorkflowLoadError) as raised:
        load_workflow("Dep", spec.services["legacy"], SourceLayout.single(tmp_path / "src"), {})
    # Then the error names the missing module, not the extra
    message = str(raised.value)
    assert "No module named 'llama_index.core.no_such_module'" in message
    assert "celeriac[" not in message
