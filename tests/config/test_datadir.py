"""The data folder and SQLite files are readable by their owner only, new or existing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from config.datadir import private_folder, private_sqlite


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_folder_and_its_missing_parents_are_private(tmp_path: Path) -> None:
    folder = private_folder(tmp_path / "a" / "b" / ".celeriac")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", folder)] == [0o700] * 3


def test_an_existing_open_folder_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a data folder made earlier with the usual umask
    folder = tmp_path / ".celeriac"
    folder.mkdir()
    os.chmod(folder, 0o755)
    (folder / "kept.txt").write_text("x")
    # When a server prepares it
    private_folder(folder)
    # Then it is its owner's only, its content kept, and the log says what changed
    assert mode(folder) == 0o700
    assert (folder / "kept.txt").read_text() == "x"
    assert f"{folder} was open to other users: now readable by its owner only" in caplog.text


def test_a_private_folder_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o700)
    private_folder(folder)
    assert mode(folder) == 0o700
    assert caplog.text == ""


def test_a_sqlite_file_is_created_private_and_existing_ones_tightened(tmp_path: Path) -> None:
    # A new database file is made 0600 before SQLite opens it
    database = tmp_path / "data" / "celeriac.db"
    private_sqlite(f"sqlite:///{database}")
    assert mode(database.parent) == 0o700
    assert mode(database) == 0o600
    # Files left by an earlier release are tightened, WAL and shared memory included
    for name in ("celeriac.db", "celeriac.db-wal", "celeriac.db-shm"):
        (tmp_path / "data" / name).touch()
        os.chmod(tmp_path / "data" / name, 0o644)
    private_sqlite(f"sqlite:///{database}")
    assert {p.name: mode(p) for p in database.parent.iterdir()} == {
        "celeriac.db": 0o600,
        "celeriac.db-wal": 0o600,
        "celeriac.db-shm": 0o600,
    }


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "postgresql://u@h/db"])
def test_other_databases_are_left_alone(url: str, tmp_path: Path) -> None:
    before = set(tmp_path.iterdir())
    private_sqlite(url)
    assert set(tmp_path.iterdir()) == before
