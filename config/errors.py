"""Errors of the config package.

Exception tree::

    ConfigError                  root: anything wrong with settings or a deployment spec
    ├── DeploymentSpecError      a deployment YAML that does not validate; carries ``errors``
    ├── SourceFileNotFound       a service's module or env file is not where its layout allows
    ├── SourceNotAllowed         a source outside the operator's roots, or of a refused scheme
    └── NestedTooDeeply          JSON or YAML nested deeper than allowed (also a ValueError)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


class ConfigError(Exception):
    """Root of every error raised by the config package."""


class DeploymentSpecError(ConfigError):
    """A deployment spec that failed validation, with the reasons per field."""

    errors: dict[str, list[str]]

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        # Copy into plain lists so callers can serialise the mapping as JSON as is.
        self.errors = {field: list(reasons) for field, reasons in errors.items()}
        # The mapping is the only argument, so the error survives pickling between processes.
        super().__init__(self.errors)

    def _describe(self) -> str:
        """Render one ``<field>: <reason>`` line per reason."""
        lines = [
            f"{field}: {reason}" for field, reasons in self.errors.items() for reason in reasons
        ]
        return "\n".join(lines) or "invalid deployment spec"

    def __str__(self) -> str:
        """Return one line per field and reason."""
        return self._describe()


class SourceFileNotFound(ConfigError):
    """A service's module or env file is in none of the places its layout allows."""

    def __init__(self, what: str, tried: Sequence[Path]) -> None:
        self.what = what
        self.tried = list(tried)
        super().__init__(f"{what} not found; looked in {', '.join(map(str, self.tried))}")


class SourceNotAllowed(ConfigError):
    """A deployment source this installation does not take: a local folder outside the
    operator's roots, or a git URL of a scheme the operator did not allow."""


class NestedTooDeeply(ConfigError, ValueError):
    """A JSON or YAML value nests arrays and objects deeper than allowed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"nested deeper than {limit} levels of arrays and objects")
