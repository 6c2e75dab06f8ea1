"""The data folder and SQLite files: created readable by their owner only.

The data folder holds the database (every task's input and result, the deployments' ``env``
values, the API tokens' hashes) and clones of git sources. It is made ``0700`` and SQLite's
files ``0600``; a folder or file that exists already, belongs to this user and is open to
others is closed the same way, with a warning in the log. Paths owned by another user are left
as they are (with a warning): this process could not change them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

FOLDER_MODE = 0o700
FILE_MODE = 0o600
#: The files SQLite keeps beside a database (WAL mode, or a rollback journal).
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_folder(path: Path) -> Path:
    """Create ``path`` readable by this user only, and its missing parents likewise (nobody
    else had them); tighten ``path`` if it exists and is open to others."""
    missing: list[Path] = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
    _tighten(path, FOLDER_MODE)
    return path


def private_sqlite(url: str) -> None:
    """Create the file of a SQLite URL with mode ``0600`` before SQLite opens it (SQLite
    gives its WAL and shared-memory files the database file's mode), and tighten existing
    ones. Other databases, and SQLite in memory, are left alone."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    database = Path(parsed.database)
    if not database.parent.exists():
        private_folder(database.parent)
    descriptor = os.open(database, os.O_CREAT | os.O_RDONLY, FILE_MODE)
    os.close(descriptor)
    for path in [database, *(Path(f"{database}{tail}") for tail in _SQLITE_COMPANIONS)]:
        if path.exists():
            _tighten(path, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    """Drop the group's and others' permissions from a path of this user's."""
    if os.name != "posix":
        return  # pragma: no cover - Windows keeps access in ACLs, not mode bits
    info = path.stat()
    if not stat.S_IMODE(info.st_mode) & 0o077:
        return
    if info.st_uid != os.getuid():
        log.warning("%s is open to other users and belongs to another user: left as it is", path)
        return
    os.chmod(path, mode)
    log.warning("%s was open to other users: now readable by its owner only", path)
