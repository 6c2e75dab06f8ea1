"""The faults: on a seeded random schedule, kill (SIGKILL) a service worker, the control-plane
consumer or the API server, or stop or kill the broker, and start it again after a while.
One fault at a time: each waits until what it broke is back before the next one is drawn."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable

from tests.soak.console import Console
from tests.soak.stack import SoakError, Stack, node

#: Fault kinds and how often each is drawn.
KINDS = {
    "worker-kill": 4,
    "control-plane-kill": 2,
    "api-kill": 2,
    "broker-restart": 1,
    "broker-kill": 1,
}
#: Seconds between the end of one fault and the next: (least, most).
GAP = (3.0, 10.0)
#: Seconds a killed process or a stopped broker stays down: (least, most).
DOWN = (0.5, 4.0)


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault injected: its kind, what it hit, when (``time.time()``), the process id it
    killed (0 for none), and when its target was back (ready again)."""

    kind: str
    target: str
    at: float
    pid: int
    back: float


class Faults:
    """A thread that injects faults on a schedule drawn from ``seed`` until told to stop."""

    def __init__(self, stack: Stack, seed: int, console: Console, kinds: dict[str, int]) -> None:
        self.stack = stack
        self.rng = random.Random(f"{seed}-faults")
        self.console = console
        self.kinds = kinds
        self.injected: list[Fault] = []
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faults", daemon=True)

    def start(self) -> None:
        """Start injecting."""
        self._thread.start()

    def stop(self) -> None:
        """Inject no more; return once the fault under way has been repaired."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        try:
            while not self._stopping.wait(self.rng.uniform(*GAP)):
                kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
                self.injected.append(self._inject(kind, self.rng.uniform(*DOWN)))
        except BaseException as exc:  # shown by the soak, which then stops
            self.error = exc
            self.console.warn(f"fault injection stopped: {exc}")

    def _inject(self, kind: str, down: float) -> Fault:
        if kind.startswith("broker-"):
            return self._broker(kind, down)
        if kind == "worker-kill":
            name = self.rng.choice(self.stack.workers)
        else:
            name = kind.removesuffix("-kill")
        return self._kill(kind, name, down)

    def _kill(self, kind: str, name: str, down: float) -> Fault:
        """SIGKILL the process ``name``, wait ``down`` seconds, start it again."""
        victim = self.stack.current(name)
        target = node(name) if name != "api" else "api"
        at = time.time()
        victim.kill()
        self.console.say(f"FAULT {kind}: {target} (pid {victim.pid}) killed")
        time.sleep(down)
        began = time.monotonic()
        self._restart(lambda: self.stack.restart(name), what=name)
        self.console.say(
            f"      {target} back after {down:.1f} s down, "
            f"{time.monotonic() - began:.1f} s to start"
        )
        return Fault(kind, target, at, victim.pid, time.time())

    def _broker(self, kind: str, down: float) -> Fault:
        """Stop (SIGTERM) or kill (SIGKILL) the broker, wait ``down`` seconds, start it."""
        at = time.time()
        if kind == "broker-kill":
            self.stack.broker.kill()
        else:
            self.stack.broker.stop()
        self.console.say(f"FAULT {kind}: broker {'killed' if kind == 'broker-kill' else 'stopped'}")
        time.sleep(down)
        began = time.monotonic()
        self._restart(self.stack.broker.start, what="the broker")
        self.console.say(
            f"      broker back after {down:.1f} s down, {time.monotonic() - began:.1f} s to start"
        )
        return Fault(kind, "broker", at, 0, time.time())

    def _restart(self, start: Callable[[], object], what: str) -> None:
        """Start something again; a start that fails is tried once more, then is fatal."""
        for attempt in (1, 2):
            try:
                start()
                return
            except SoakError as exc:
                if attempt == 2:
                    raise
                self.console.warn(f"{what} did not come back ({exc}); trying once more")
