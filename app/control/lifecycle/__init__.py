"""The task lifecycle: the only code that changes tasks, sessions and events (see operations)."""

from app.control.lifecycle.control import Ended
from app.control.lifecycle.keys import Replay, RequestKey
from app.control.lifecycle.operations import Finished, Lifecycle, NewTask, Recovered
from app.control.lifecycle.turns import MultitaskStrategy, Turn

__all__ = [
    "Ended",
    "Finished",
    "Lifecycle",
    "MultitaskStrategy",
    "NewTask",
    "Recovered",
    "Replay",
    "RequestKey",
    "Turn",
]
