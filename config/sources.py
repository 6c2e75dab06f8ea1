"""Where deployment sources may come from: the folders local sources must lie in, the URL
schemes git sources may use, and how a URL's credentials are kept out of messages.

A deployment runs its code, so its source is the operator's decision, not the caller's. A local
source, once the base path, ``..`` and symbolic links are resolved, must lie under one of the
roots in ``CELERIAC_SOURCE_ROOTS``. Without that setting, a server in *open mode* (bound to
loopback, no API token: every caller is its own user) takes any folder its user can read; any
other takes the data folder and the folder it was started in. Whether the mode is open is the
caller's to say (it depends on the token store): see ``app/trust.py`` and ``workers/trust.py``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from config.errors import SourceNotAllowed
from config.settings import Settings

#: Git's remote helpers ``transport::address`` (``ext::sh -c ...`` runs a command).
_HELPER = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")
#: An scp-like ``[user@]host:path``: a colon before any slash, and no scheme.
_SCP_LIKE = re.compile(r"^[^/:]+:")
#: The user information of a URL: ``scheme://user[:password]@``.
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


@dataclass(frozen=True)
class SourcePolicy:
    """The folders local sources must lie in (``None``: any) and the git schemes allowed."""

    roots: tuple[Path, ...] | None
    git_schemes: frozenset[str]

    @classmethod
    def from_settings(
        cls, settings: Settings, *, open_mode: bool, also: Iterable[Path] = ()
    ) -> SourcePolicy:
        """The policy of a process with ``settings``; ``open_mode`` is True when every caller
        is the server's own user (loopback, no token), ``also`` adds roots the operator named
        on the command line (a worker's ``--base-path``)."""
        schemes = frozenset(s.strip().lower() for s in settings.git_schemes.split(",") if s.strip())
        configured = [Path(p) for p in settings.source_roots.split(os.pathsep) if p.strip()]
        if configured:
            roots: list[Path] | None = configured
        elif open_mode:
            roots = None
        else:
            roots = [settings.data_dir, Path.cwd()]
        if roots is not None:
            roots = [*roots, *also]
        resolved = None if roots is None else tuple(r.expanduser().resolve() for r in roots)
        return cls(resolved, schemes)

    def check_folder(self, folder: Path) -> None:
        """SourceNotAllowed unless ``folder`` (resolved: no ``..``, no symbolic links) lies
        under one of the roots."""
        if self.roots is None:
            return
        resolved = folder.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise SourceNotAllowed(
                "the folder lies outside the folders this server takes sources from "
                "(CELERIAC_SOURCE_ROOTS)"
            )

    def check_git(self, url: str) -> None:
        """SourceNotAllowed unless ``url`` uses an allowed scheme and cannot pass for an
        option of git's command line."""
        if url.startswith("-"):
            raise SourceNotAllowed("a git URL cannot start with '-'")
        scheme = git_scheme(url)
        if scheme not in self.git_schemes:
            allowed = ", ".join(sorted(self.git_schemes)) or "none"
            raise SourceNotAllowed(
                f"git URLs of scheme {scheme!r} are not allowed here (allowed: {allowed}; "
                "CELERIAC_GIT_SCHEMES)"
            )

    @property
    def git_allow_protocol(self) -> str:
        """The value of git's ``GIT_ALLOW_PROTOCOL``, so that git itself refuses the rest
        (submodules and redirects included)."""
        return ":".join(sorted(self.git_schemes))


def git_scheme(url: str) -> str:
    """The transport a git URL uses, as git names it: ``https``, ``ssh`` (also for
    ``user@host:path``), ``file`` (also for a plain path), ``ext``..."""
    if "://" in url:
        return url.split("://", 1)[0].lower()
    helper = _HELPER.match(url)
    if helper:
        return helper.group(1).lower()
    if _SCP_LIKE.match(url):
        return "ssh"
    return "file"


def without_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub("***@", text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
