"""Errors of the worker side.

WorkerError
├── ProtocolError        a message that cannot be decoded (wrong version, missing field)
├── UnknownDeployment    a step for a deployment this worker does not serve
│   ├── ControlPlaneUnreachable  the deployment could not be fetched now (retry later)
│   └── TokenRefused     the control plane refused this worker's API token, or its scope
├── WorkflowLoadError    a service's workflow could not be synced, imported or found
├── WorkflowStateError   a session's Context could not be stored as JSON
├── ResultTooLarge       a run's result is over the size or nesting bound for results
└── HandedBack           a run waiting for input was stopped with its worker, to run elsewhere
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error raised by the worker package."""


class WorkflowFailed(WorkerError):
    """The run ended without success (its workflow raised, it was stopped, or its result was
    refused). Raised by ``run_step`` after the outcome was reported, so that Celery and Flower
    show the task as FAILURE with this error; the step is acknowledged all the same."""


class ProtocolError(WorkerError):
    """A message does not follow the protocol."""


class UnknownDeployment(WorkerError):
    """This worker does not serve the deployment or service a message names."""


class WorkflowLoadError(WorkerError):
    """A service's workflow could not be synced, imported or found."""


class WorkflowStateError(WorkerError):
    """A session's Context could not be stored as JSON."""


class ResultTooLarge(WorkerError):
    """A run's result is larger, or nests deeper, than results may."""


class ControlPlaneUnreachable(UnknownDeployment):
    """The control plane did not answer a worker's question; the step is tried again later."""


class HandedBack(WorkerError):
    """A run waiting for an event was stopped because its worker stops: the step goes back to
    its queue, for another worker to run it again."""


class TokenRefused(UnknownDeployment):
    """The control plane refused this worker's API token, or withheld ``env`` values from
    it: the worker needs a live token of scope ``worker``."""
