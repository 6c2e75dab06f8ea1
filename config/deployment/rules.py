"""Rules for single fields of a deployment file, and how a YAML value's kind is named."""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from marshmallow import ValidationError, validate

from config.deployment.spec import SourceType, split_git_location
from config.sources import without_credentials

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
PORT_RANGE = validate.Range(min=1, max=65535)


def check_safe_name(value: str) -> None:
    """Accept names that are safe as a URL path segment and as a folder name."""
    if not value:
        raise ValidationError("Must not be empty.")
    if not _SAFE_NAME.fullmatch(value):
        raise ValidationError(
            f"Invalid name {value!r}: use only letters, digits, '-', '_' and '.', "
            "because it is used in URL paths and as a folder name."
        )
    if value in {".", ".."}:
        raise ValidationError(f"Invalid name {value!r}: it cannot name a folder.")


def check_error_name(value: str) -> None:
    """Accept an exception class name: ``Name`` or dotted ``module.Name`` (never imported)."""
    if not value:
        raise ValidationError("Must not be empty.")
    if not all(part.isidentifier() for part in value.split(".")):
        raise ValidationError(
            f"Invalid error type {value!r}: expected a class name, bare or with its module "
            "(e.g. 'ConnectionError', 'httpx.HTTPError')."
        )


def check_source_type(value: str) -> None:
    """Accept the source types Celeriac can deploy."""
    if value == SourceType.DOCKER.value:
        raise ValidationError("docker sources are not supported; use local or git.")
    if value not in {SourceType.LOCAL.value, SourceType.GIT.value}:
        raise ValidationError(f"Unknown source type {value!r}; must be one of: local, git.")


def _is_absolute(path: str) -> bool:
    # Windows drive paths count too: the YAML may have been written on either system.
    return PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()


def _check_module_dir(value: str) -> None:
    """Accept a folder relative to the synced source root that does not climb out of it."""
    if _is_absolute(value):
        raise ValidationError(f"{value!r} must be relative to the service's source folder.")
    if ".." in PurePosixPath(value).parts:
        raise ValidationError(f"{value!r} must not leave the service's source folder ('..').")


def check_import_path(value: str) -> None:
    """Accept ``[dir/]module:attr`` with a Python module name and attribute name."""
    target, colon, attr = value.partition(":")
    module_dir, _, module = target.rpartition("/")
    if not (colon and _is_identifier(attr) and all(map(_is_identifier, module.split(".")))):
        raise ValidationError(
            f"Invalid import path {value!r}: expected '[dir/]module:attr', "
            "where module and attr are Python names (e.g. 'src/workflow:echo_workflow')."
        )
    if module_dir:
        _check_module_dir(module_dir)


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def check_ui_path(value: str) -> None:
    """Accept the UI's path: a folder of the UI source, not a Python import path."""
    if not value:
        raise ValidationError("Must not be empty.")
    _check_module_dir(value)


def check_local_location(location: str) -> None:
    """Accept a folder relative to the deployment's base path (the YAML file's folder)."""
    if _is_absolute(location):
        raise ValidationError(
            f"{location!r} must be relative to the deployment's base path "
            "(the folder of the deployment file)."
        )


def check_git_location(location: str) -> None:
    """Accept a clone URL with an optional non-empty ``@branch`` suffix."""
    url, ref = split_git_location(location)
    shown = without_credentials(location)
    if not url or any(char.isspace() for char in location):
        raise ValidationError(f"Invalid git location {shown!r}: expected a clone URL.")
    if url.startswith("-"):
        raise ValidationError(f"Invalid git location {shown!r}: a URL cannot start with '-'.")
    if ref == "":
        raise ValidationError(f"Invalid git location {shown!r}: the branch after '@' is empty.")
    if ref is not None and ref.startswith("-"):
        raise ValidationError(f"Invalid git location {shown!r}: a branch cannot start with '-'.")


def check_alias(data: Mapping[str, Any], old: str, new: str, new_key: str | None = None) -> None:
    """Refuse an old and a new spelling of one field that disagree.

    The error is filed under ``new_key``, the new field's key in the file (its attribute name
    by default): marshmallow before 3.26 does not turn attribute names into data keys for
    errors raised by schema validators, later releases do.
    """
    key = new_key or new
    if data.get(old) is not None and data.get(new) is not None and data[old] != data[new]:
        raise ValidationError(
            f"Conflicts with {old!r} ({data[new]!r} != {data[old]!r}); "
            f"{old!r} is the older spelling of {key!r}, give only one.",
            key,
        )


def kind(value: object) -> str:
    """Name a parsed YAML value's kind the way a YAML author would."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a scalar ({type(value).__name__})"
