"""Bring a service's source code to this host: a local folder in place, or a git clone.

Whatever the control plane checked when the deployment was made, the worker checks again
against its own policy (``config.sources``): a deployment stored before a rule, or a spec that
did not come from this control plane, never runs code from where the operator did not allow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from config.datadir import private_folder
from config.deployment import ServiceSpec, SourceLayout, SourceType
from config.errors import SourceNotAllowed
from config.sources import SourcePolicy, without_credentials
from workers.errors import WorkflowLoadError

_MARKER = ".celeriac-source.json"


def sync_source(
    deployment: str,
    service: ServiceSpec,
    base_path: Path,
    sources_dir: Path,
    policy: SourcePolicy,
    *,
    version: int | None = None,
) -> SourceLayout:
    """Return where the service's code is, cloning it first if it is in git; refuse a source
    that ``policy`` does not allow.

    With a ``version`` (a durable run's, pinned to the version it started on), a git source
    is cloned into a folder of that version's own, once: the commit resolved when this host
    first loaded the version is the one it runs until the version is dropped, whatever the
    branch does meanwhile. A local folder is read in place: it is not the platform's to pin."""
    source = service.source
    if source is None:
        raise WorkflowLoadError(f"service {service.id!r} has no source to load its workflow from")
    if source.type == SourceType.LOCAL:
        layout = SourceLayout.local(base_path, source.location)
        try:
            policy.check_folder(layout.root)
        except SourceNotAllowed as exc:
            raise WorkflowLoadError(
                f"service {service.id!r}: local source {source.location!r} under {base_path} "
                f"is refused by this worker: {exc}"
            ) from exc
        if not layout.root.is_dir():
            raise WorkflowLoadError(
                f"service {service.id!r}: local source {source.location!r} is not a folder "
                f"under {base_path} (resolved to {layout.root})"
            )
        return layout
    if source.type == SourceType.GIT:
        try:
            policy.check_git(source.git_url)
        except SourceNotAllowed as exc:
            raise WorkflowLoadError(
                f"service {service.id!r}: git source {without_credentials(source.location)!r} "
                f"is refused by this worker: {exc}"
            ) from exc
        return SourceLayout.single(_sync_git(deployment, service, sources_dir, policy, version))
    raise WorkflowLoadError(f"service {service.id!r}: {source.type} sources are not supported")


def _sync_git(
    deployment: str,
    service: ServiceSpec,
    sources_dir: Path,
    policy: SourcePolicy,
    version: int | None = None,
) -> Path:
    """Clone ``url@ref`` into the data folder, replacing any older clone of another ref (in
    the folder of ``version``, if given, which older clones of the service's never share)."""
    assert service.source is not None
    url, ref = service.source.git_url, service.source.git_ref
    wanted = {"url": url, "ref": ref}
    dest = sources_dir / deployment / service.id
    if version is not None:
        dest = dest.with_name(f"{service.id}@v{version}")
    marker = dest / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return dest
    private_folder(dest.parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".{service.id}-", dir=dest.parent))
    command = ["git", "clone", "--quiet", "--depth", "1", "--single-branch"]
    if ref:
        command.append(f"--branch={ref}")
    # ``--``: nothing after it is an option, whatever it starts with.
    command += ["--", url, str(scratch / "tree")]
    # Git itself refuses other transports too (submodules, redirects, ``ext::``).
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": policy.git_allow_protocol,
    }
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        # Git may print the URL it was given, password and all.
        raise WorkflowLoadError(
            f"service {service.id!r}: git clone of {without_credentials(url)!r}"
            f"{' at ' + ref if ref else ''} failed: {without_credentials(detail.strip())}"
        ) from exc
    (scratch / "tree" / _MARKER).write_text(json.dumps(wanted))
    # Swap the new clone in with renames, so a reader never sees a half-written tree.
    old = dest.with_name(dest.name + ".old-" + hashlib.sha1(str(scratch).encode()).hexdigest()[:8])
    if dest.exists():
        dest.rename(old)
    (scratch / "tree").rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return dest
