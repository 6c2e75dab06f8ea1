"""``celeriac config``: named profiles of server settings, kept in a small YAML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml

from app.cli.context import CliState, echo_json
from app.cli.output import Output, echo_table, output_option
from app.sdk import DEFAULT_SERVER

DEFAULT_PROFILE = "default"
#: Seconds of the HTTP timeout when neither ``-t`` nor the profile sets one.
DEFAULT_TIMEOUT = 120.0


def profiles_path() -> Path:
    """``$CELERIAC_CONFIG``, else ``~/.config/celeriac/profiles.yml``."""
    explicit = os.environ.get("CELERIAC_CONFIG")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "celeriac" / "profiles.yml"


def load_profiles(path: Path) -> dict[str, Any]:
    """The profile file's content, or an empty one."""
    if not path.is_file():
        return {"current_profile": DEFAULT_PROFILE, "profiles": {}}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path} is not valid YAML: {exc}") from exc
    data.setdefault("current_profile", DEFAULT_PROFILE)
    data.setdefault("profiles", {})
    return data


def save_profiles(path: Path, data: dict[str, Any]) -> None:
    """Write the profile file, readable by its owner only (it may hold tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=True))
    os.chmod(path, 0o600)  # a file written before tokens were kept in it


def shown(values: dict[str, Any]) -> dict[str, Any]:
    """A profile's values as they may be printed: a token only as whether it is set."""
    return {k: ("(set)" if k == "token" else v) for k, v in values.items()}


def active_profile(data: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The values of profile ``name`` (or the current one)."""
    return dict(data["profiles"].get(name or data["current_profile"], {}))


def resolve_state(
    server: str | None, profile: str | None, timeout: float | None, token: str | None
) -> CliState:
    """The global options given (``-s``, ``-p``, ``-t``, ``--token``, or their variables)
    over the profile's values, over the defaults."""
    values = active_profile(load_profiles(profiles_path()), profile)
    return CliState(
        server=server or values.get("server") or DEFAULT_SERVER,
        timeout=timeout if timeout is not None else values.get("timeout", DEFAULT_TIMEOUT),
        token=token or values.get("token") or None,
    )


@click.group("config")
def config_group() -> None:
    """Manage profiles (server URL, timeout and API token per profile)."""


@config_group.command("get-profiles")
@output_option
def get_profiles(output: Output) -> None:
    """List profiles; the current one is marked with *."""
    data = load_profiles(profiles_path())
    if output == "json":
        echo_json(
            {
                "current_profile": data["current_profile"],
                "profiles": {name: shown(values) for name, values in data["profiles"].items()},
            }
        )
        return
    echo_table(
        ("CURRENT", "NAME", "SERVER", "TIMEOUT", "TOKEN"),
        [
            (
                "*" if name == data["current_profile"] else " ",
                name,
                str(values.get("server") or ""),
                str(values.get("timeout") or ""),
                "(set)" if values.get("token") else "",
            )
            for name, values in sorted(data["profiles"].items())
        ],
        empty="No profiles.",
    )


@config_group.command("current-profile")
@output_option
def current_profile(output: Output) -> None:
    """Print the current profile's name."""
    name = load_profiles(profiles_path())["current_profile"]
    if output == "json":
        echo_json({"current_profile": name})
    else:
        click.echo(name)


#: ``--token`` given without a value: ask for it.
_ASK = "\0ask"


@config_group.command("set-profile")
@click.argument("name")
@click.option("--server", help="API server URL.")
@click.option("--timeout", type=float, help="HTTP timeout in seconds.")
@click.option(
    "--token",
    is_flag=False,
    flag_value=_ASK,
    default=None,
    help="Keep this API token in the profile; '-' removes it. Given without a value, it is "
    "asked for (not echoed), which keeps it out of the shell's history.",
)
def set_profile(name: str, server: str | None, timeout: float | None, token: str | None) -> None:
    """Create or change a profile."""
    path = profiles_path()
    data = load_profiles(path)
    profile = data["profiles"].setdefault(name, {})
    if server:
        profile["server"] = server
    if timeout is not None:
        profile["timeout"] = timeout
    if token == _ASK:
        token = click.prompt("API token", hide_input=True)
    if token is not None:
        token = token.strip()
        if token == "-":
            profile.pop("token", None)
        else:
            profile["token"] = token
    save_profiles(path, data)
    click.echo(f"Profile {name}: {shown(profile)}")


@config_group.command("use-profile")
@click.argument("name")
def use_profile(name: str) -> None:
    """Make a profile the current one."""
    path = profiles_path()
    data = load_profiles(path)
    if name not in data["profiles"]:
        raise click.ClickException(f"no profile named {name!r}")
    data["current_profile"] = name
    save_profiles(path, data)
    click.echo(f"Using profile {name}")


@config_group.command("delete-profile")
@click.argument("name")
def delete_profile(name: str) -> None:
    """Delete a profile."""
    path = profiles_path()
    data = load_profiles(path)
    if data["profiles"].pop(name, None) is None:
        raise click.ClickException(f"no profile named {name!r}")
    if data["current_profile"] == name:
        data["current_profile"] = DEFAULT_PROFILE
    save_profiles(path, data)
    click.echo(f"Deleted profile {name}")
