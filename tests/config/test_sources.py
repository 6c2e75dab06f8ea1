"""Where deployment sources may come from: the operator's roots and git schemes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.errors import SourceNotAllowed
from config.settings import Settings
from config.sources import SourcePolicy, git_scheme, is_loopback, without_credentials


def policy(tmp_path: Path, *, roots: str = "", open_mode: bool = False, **kw: str) -> SourcePolicy:
    settings = Settings(data_dir=tmp_path / "data", source_roots=roots, **kw)  # type: ignore[arg-type]
    return SourcePolicy.from_settings(settings, open_mode=open_mode)


def test_configured_roots_are_the_only_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "src").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    allowed = policy(tmp_path, roots=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'c'}")
    allowed.check_folder(tmp_path / "a" / "src")
    allowed.check_folder(tmp_path / "c" / "not" / "yet")
    with pytest.raises(SourceNotAllowed, match="outside the folders this server takes sources"):
        allowed.check_folder(tmp_path / "b")
    # The roots win over the open mode
    with pytest.raises(SourceNotAllowed):
        policy(tmp_path, roots=str(tmp_path / "a"), open_mode=True).check_folder(tmp_path / "b")


def test_dot_dot_and_symbolic_links_are_resolved_first(tmp_path: Path) -> None:
    (tmp_path / "root" / "src").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    allowed = policy(tmp_path, roots=str(tmp_path / "root"))
    with pytest.raises(SourceNotAllowed):
        allowed.check_folder(tmp_path / "root" / "src" / ".." / ".." / "outside")
    with pytest.raises(SourceNotAllowed):
        allowed.check_folder(tmp_path / "root" / "link")
    allowed.check_folder(tmp_path / "root" / "src" / ".." / "src")


def test_open_mode_takes_any_folder_and_the_closed_default_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    policy(tmp_path, open_mode=True).check_folder(Path("/"))
    closed = policy(tmp_path)
    assert closed.roots == ((tmp_path / "data").resolve(), started_in.resolve())
    closed.check_folder(started_in / "project")
    closed.check_folder(tmp_path / "data" / "sources")
    with pytest.raises(SourceNotAllowed):
        closed.check_folder(tmp_path)


def test_a_worker_adds_the_base_path_its_operator_named(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    worker = SourcePolicy.from_settings(settings, open_mode=False, also=[tmp_path / "srv"])
    worker.check_folder(tmp_path / "srv" / "src")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("https://github.com/o/r.git", "https"),
        ("HTTP://host/r", "http"),
        ("ssh://git@host/r.git", "ssh"),
        ("git@github.com:o/r.git", "ssh"),
        ("git://host/r", "git"),
        ("file:///srv/repo", "file"),
        ("/srv/repo", "file"),
        ("../repo", "file"),
        ("ext::sh -c touch% /tmp/pwned", "ext"),
        ("fd::17", "fd"),
    ],
)
def test_git_schemes_as_git_sees_them(url: str, scheme: str) -> None:
    assert git_scheme(url) == scheme


@pytest.mark.parametrize(
    "url",
    ["ssh://git@host/r.git", "git@host:o/r.git", "file:///srv/r", "/srv/r", "ext::sh -c id"],
)
def test_only_https_by_default(tmp_path: Path, url: str) -> None:
    with pytest.raises(SourceNotAllowed, match=r"are not allowed here \(allowed: https;"):
        policy(tmp_path).check_git(url)
    policy(tmp_path).check_git("https://github.com/o/r.git")


def test_the_operator_chooses_the_schemes(tmp_path: Path) -> None:
    allowed = policy(tmp_path, git_schemes="https, SSH")
    allowed.check_git("git@github.com:o/r.git")
    assert allowed.git_allow_protocol == "https:ssh"
    with pytest.raises(SourceNotAllowed):
        allowed.check_git("file:///srv/r")


def test_a_url_that_looks_like_an_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceNotAllowed, match="cannot start with '-'"):
        policy(tmp_path, git_schemes="https,file").check_git("--upload-pack=touch /tmp/x")


def test_credentials_are_kept_out_of_messages() -> None:
    text = "git clone of 'https://alice:s3cret@example.org/r.git' failed: https://tok@h/x"
    assert without_credentials(text) == (
        "git clone of 'https://***@example.org/r.git' failed: https://***@h/x"
    )
    assert without_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
