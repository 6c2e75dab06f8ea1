"""``celeriac tokens`` on the server's database, and the CLI sending a token it never prints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from app.cli.main import cli
from app.control.tokens import TokenInfo
from app.server import Server
from tests.conftest import QUICKSTART
from tests.support.cli_tables import rows


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CELERIAC_* variable leaks in; profiles and the data folder live in tmp_path."""
    for name in [n for n in os.environ if n.startswith("CELERIAC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.setenv("CELERIAC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def celeriac(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, prog_name="celeriac")


def made(result: Result) -> str:
    """The token ``tokens create`` printed (its only line on stdout)."""
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clr_"), result.stdout
    return lines[0]


def stored_rows(data: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(data / "celeriac.db") as conn:
        return list(conn.execute("SELECT id, name, scope, token_hash, revoked_at FROM api_tokens"))


def test_create_prints_the_token_once_and_stores_only_its_hash(clean_environment: Path) -> None:
    # When an admin token is made on a server's host that has no database yet
    result = celeriac("tokens", "create", "--scope", "admin", "--name", "ops")
    token = made(result)
    # Then the token is long and random, and stderr says it will not be shown again
    assert len(token) == 4 + 43
    assert "Token 1 'ops', scope admin. Keep it now; it is not shown again:" in result.stderr
    # And the database holds its SHA-256, not the token
    rows = stored_rows(clean_environment)
    assert rows == [(1, "ops", "admin", hashlib.sha256(token.encode()).hexdigest(), None)]
    assert token.encode() not in (clean_environment / "celeriac.db").read_bytes()
    # And the data folder and the database were made private
    assert stat.S_IMODE(clean_environment.stat().st_mode) == 0o700
    assert stat.S_IMODE((clean_environment / "celeriac.db").stat().st_mode) == 0o600


def test_list_shows_every_token_but_never_a_token(clean_environment: Path) -> None:
    first = made(celeriac("tokens", "create", "--scope", "read"))
    second = made(celeriac("tokens", "create", "--scope", "worker", "--name", "workers"))
    listed = celeriac("tokens", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SCOPE", "CREATED", "LAST", "USED", "REVOKED"]
    assert lines[1].split()[:3] == ["1", "-", "read"]
    assert lines[2].split()[:3] == ["2", "workers", "worker"]
    assert first not in listed.output and second not in listed.output
    # And -o json gives each token's fields, never the token either
    as_json = celeriac("tokens", "list", "-o", "json")
    assert as_json.exit_code == 0, as_json.output
    listed_json = json.loads(as_json.stdout)
    assert [(t["id"], t["name"], t["scope"]) for t in listed_json] == [
        (1, None, "read"),
        (2, "workers", "worker"),
    ]
    assert set(listed_json[0]) == {f.name for f in dataclasses.fields(TokenInfo)}
    assert first not in as_json.output and second not in as_json.output


def test_revoke_by_id_or_name_and_a_name_is_free_again(clean_environment: Path) -> None:
    made(celeriac("tokens", "create", "--scope", "run", "--name", "ci"))
    made(celeriac("tokens", "create", "--scope", "read"))
    # A live name is taken
    taken = celeriac("tokens", "create", "--scope", "run", "--name", "ci")
    assert taken.exit_code == 1
    assert "a live token is named 'ci'" in taken.stderr
    assert len(stored_rows(clean_environment)) == 2
    # Revoked by name, then by id
    by_name = celeriac("tokens", "revoke", "ci")
    assert by_name.exit_code == 0, by_name.output
    assert by_name.stdout.strip() == "Revoked token 1 'ci' (run)."
    assert celeriac("tokens", "revoke", "2").stdout.strip() == "Revoked token 2 (read)."
    assert all(row[4] is not None for row in stored_rows(clean_environment))
    # And the name may name a new token
    made(celeriac("tokens", "create", "--scope", "run", "--name", "ci"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["revoke", "7"], "no token with id or live name '7'"),
        (["revoke", "nobody"], "no token with id or live name 'nobody'"),
        (["create", "--scope", "admin", "--name", "12"], "invalid token name '12'"),
        (["create", "--scope", "admin", "--name", "a b"], "invalid token name 'a b'"),
        (["create", "--scope", "root"], "'root' is not one of 'admin', 'run', 'read', 'worker'"),
    ],
)
def test_mistakes_end_with_a_message_and_change_nothing(
    clean_environment: Path, args: list[str], message: str
) -> None:
    made(celeriac("tokens", "create", "--scope", "read", "--name", "kept"))
    result = celeriac("tokens", *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert [row[1:3] + row[4:] for row in stored_rows(clean_environment)] == [
        ("kept", "read", None)
    ]


def test_serve_beyond_loopback_without_a_token_is_refused() -> None:
    result = celeriac("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0 without an API token" in result.stderr


# -- the CLI as a client --------------------------------------------------------------------------


@pytest.fixture
def protected(server: Server, live_server: str) -> tuple[str, str]:
    """A live server with a run token; (URL, token)."""
    admin = server.plane.tokens.create("admin").token
    token = server.plane.tokens.create("run").token
    deployed = celeriac("-s", live_server, "--token", admin, "deploy", str(QUICKSTART))
    assert deployed.exit_code == 0, deployed.output
    return live_server, token


def test_without_a_token_the_cli_says_what_is_missing(protected: tuple[str, str]) -> None:
    url, _ = protected
    result = celeriac("-s", url, "run", "-d", "QuickStart", "-a", "message", "hi")
    assert result.exit_code == 1
    assert "this server needs a live API token" in result.stderr
    assert result.stderr.endswith(
        "(give the CLI a token: --token, CELERIAC_TOKEN, or a profile's "
        "(celeriac config set-profile NAME --token))\n"
    )


def test_the_token_comes_from_the_option_the_variable_or_the_profile(
    protected: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, token = protected
    run = ("run", "-d", "QuickStart", "-a", "message", "hi")
    outputs: list[str] = []
    # The option
    by_option = celeriac("-s", url, "--token", token, *run)
    assert by_option.stdout.strip() == "Message received: hi", by_option.output
    outputs.append(by_option.output)
    # The variable
    monkeypatch.setenv("CELERIAC_TOKEN", token)
    by_variable = celeriac("-s", url, *run)
    assert by_variable.stdout.strip() == "Message received: hi", by_variable.output
    outputs.append(by_variable.output)
    monkeypatch.delenv("CELERIAC_TOKEN")
    # The profile, the token typed at a prompt that does not echo it
    saved = celeriac("config", "set-profile", "lab", "--server", url, "--token", stdin=token + "\n")
    assert saved.exit_code == 0, saved.output
    assert "'token': '(set)'" in saved.stdout
    outputs.append(saved.output)
    assert celeriac("config", "use-profile", "lab").exit_code == 0
    by_profile = celeriac(*run)
    assert by_profile.stdout.strip() == "Message received: hi", by_profile.output
    outputs.append(by_profile.output)
    listed = celeriac("config", "get-profiles")
    assert rows(listed.stdout)[0]["TOKEN"] == "(set)"
    outputs.append(listed.output)
    # The profile file, which holds the token, is its owner's only
    profiles = tmp_path / "config" / "profiles.yml"
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert yaml.safe_load(profiles.read_text())["profiles"]["lab"]["token"] == token
    # The token given as the option's value instead, and '-' that removes it
    given = celeriac("config", "set-profile", "lab2", "--token", token, "--server", url)
    assert given.exit_code == 0, given.output
    outputs.append(given.output)
    assert yaml.safe_load(profiles.read_text())["profiles"]["lab2"]["token"] == token
    removed = celeriac("config", "set-profile", "lab2", "--token", "-")
    assert removed.exit_code == 0, removed.output
    assert "token" not in yaml.safe_load(profiles.read_text())["profiles"]["lab2"]
    # And no command printed the token
    assert all(token not in output for output in outputs)


def test_a_token_without_the_scope_gets_the_reason(protected: tuple[str, str]) -> None:
    url, token = protected
    result = celeriac("-s", url, "--token", token, "deployments", "delete", "QuickStart", "--yes")
    assert result.exit_code == 1
    assert "this token's scope (run) does not allow DELETE" in result.stderr
    assert token not in result.output
