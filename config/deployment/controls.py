"""Celeriac's task controls of one service: time limits, retries and a concurrency cap.

They come from the ``celeriac:`` block of a service entry, a key LlamaDeploy does not have.
``config.deployment.schema`` validates that block and builds these values; workers, which get
the deployment as JSON, rebuild them with ``ServiceControls.from_dict`` without marshmallow.
Nothing here imports a user's class: error types are matched by name only, because a client
must never name a class for the server to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Longest time limit, queue timeout or retry delay, in seconds (30 days).
MAX_SECONDS = 30 * 24 * 3600
#: Most runs a retry policy may allow, the first included.
MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed task runs again, after which delays, and on which errors."""

    attempts: int
    backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 0.1
    on: tuple[str, ...] = ()
    not_on: tuple[str, ...] = ()

    def delay(self, retry_number: int, draw: float) -> float:
        """Seconds to wait before retry ``retry_number`` (1 is the first retry).

        ``draw`` is a number in [0, 1) from the caller (``random.random()``), so that this stays
        pure: 0 shortens the delay by ``jitter`` of itself, 0.5 keeps it, near 1 lengthens it.
        """
        if retry_number < 1:
            raise ValueError(f"retry_number starts at 1, got {retry_number}")
        if not 0.0 <= draw <= 1.0:
            raise ValueError(f"draw must be in [0, 1), got {draw}")
        if self.backoff == 0:
            return 0.0
        try:
            grown = self.backoff * self.multiplier ** (retry_number - 1)
        except OverflowError:
            # Far past any cap: the cap applies.
            grown = math.inf
        base = min(self.max_backoff, grown)
        factor = 1.0 + self.jitter * (2.0 * draw - 1.0)
        return min(self.max_backoff, base * factor)

    def retries(self, error_type_names: Sequence[str]) -> bool:
        """Whether an error is retried, given the qualified names (``module.QualName``) of the
        classes along its MRO, the error's own class first.

        A name in ``on`` or ``not_on`` matches a class by its qualified name or by its bare
        class name, so ``httpx.HTTPError`` and ``HTTPError`` both match every subclass of
        ``httpx.HTTPError``. ``not_on`` is checked first; an empty ``on`` means every error.
        """
        if any(_names_a_class(name, error_type_names) for name in self.not_on):
            return False
        if not self.on:
            return True
        return any(_names_a_class(name, error_type_names) for name in self.on)

    def to_dict(self) -> dict[str, Any]:
        """Return the ``retry`` mapping in the YAML's spelling, defaults included."""
        document: dict[str, Any] = {
            "attempts": self.attempts,
            "backoff": self.backoff,
            "multiplier": self.multiplier,
            "max-backoff": self.max_backoff,
            "jitter": self.jitter,
        }
        if self.on:
            document["on"] = list(self.on)
        if self.not_on:
            document["not-on"] = list(self.not_on)
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RetryPolicy:
        """Build from the ``retry`` mapping's JSON form (already validated: no checks here)."""
        _refuse_unknown(document, _RETRY_KEYS, "retry")
        return cls(
            attempts=int(document["attempts"]),
            backoff=float(document.get("backoff", 1.0)),
            multiplier=float(document.get("multiplier", 2.0)),
            max_backoff=float(document.get("max-backoff", 60.0)),
            jitter=float(document.get("jitter", 0.1)),
            on=tuple(document.get("on") or ()),
            not_on=tuple(document.get("not-on") or ()),
        )


@dataclass(frozen=True)
class ConcurrencyLimit:
    """How many tasks of a service may run at once, in all and per value of an input field."""

    limit: int
    key: str | None = None
    per_key: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the ``concurrency`` mapping in the YAML's spelling."""
        document: dict[str, Any] = {"limit": self.limit}
        if self.key is not None:
            document["key"] = self.key
        if self.per_key is not None:
            document["per-key"] = self.per_key
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ConcurrencyLimit:
        """Build from the ``concurrency`` mapping's JSON form (already validated)."""
        _refuse_unknown(document, _CONCURRENCY_KEYS, "concurrency")
        per_key = document.get("per-key")
        return cls(
            limit=int(document["limit"]),
            key=document.get("key"),
            per_key=None if per_key is None else int(per_key),
        )


@dataclass(frozen=True)
class ServiceControls:
    """The ``celeriac:`` block of a service: every control is optional (None: no control)."""

    time_limit: float | None = None
    queue_timeout: float | None = None
    retry: RetryPolicy | None = None
    concurrency: ConcurrencyLimit | None = None
    #: Journal the service's runs, to resume them from their last finished step after a
    #: crash, and park those that wait for a person (see ``workers.durable``).
    durable: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the ``celeriac`` mapping in the YAML's spelling, unset controls left out."""
        document: dict[str, Any] = {}
        if self.durable:
            document["durable"] = True
        if self.time_limit is not None:
            document["time-limit"] = self.time_limit
        if self.queue_timeout is not None:
            document["queue-timeout"] = self.queue_timeout
        if self.retry is not None:
            document["retry"] = self.retry.to_dict()
        if self.concurrency is not None:
            document["concurrency"] = self.concurrency.to_dict()
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ServiceControls:
        """Build from the ``celeriac`` mapping's JSON form, as ``to_dict`` wrote it.

        For a spec the control plane validated already: a key it does not know is refused
        (ValueError), wrong values are not looked for.
        """
        _refuse_unknown(document, _CONTROLS_KEYS, "celeriac")
        time_limit = document.get("time-limit")
        queue_timeout = document.get("queue-timeout")
        retry = document.get("retry")
        concurrency = document.get("concurrency")
        return cls(
            time_limit=None if time_limit is None else float(time_limit),
            queue_timeout=None if queue_timeout is None else float(queue_timeout),
            retry=None if retry is None else RetryPolicy.from_dict(retry),
            concurrency=None if concurrency is None else ConcurrencyLimit.from_dict(concurrency),
            durable=bool(document.get("durable", False)),
        )


_CONTROLS_KEYS = frozenset({"time-limit", "queue-timeout", "retry", "concurrency", "durable"})
_RETRY_KEYS = frozenset(
    {"attempts", "backoff", "multiplier", "max-backoff", "jitter", "on", "not-on"}
)
_CONCURRENCY_KEYS = frozenset({"limit", "key", "per-key"})


def _refuse_unknown(document: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    """Raise ValueError naming the keys of ``document`` not in ``known``."""
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _names_a_class(name: str, qualified_names: Sequence[str]) -> bool:
    """Whether ``name`` is one of the qualified names or the bare class name of one."""
    return any(name in (qualified, qualified.rpartition(".")[2]) for qualified in qualified_names)
