"""What a person watching the soak reads: lines stamped with the seconds since the start."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO


class Console:
    """Prints lines from any thread, each stamped with the time elapsed since the soak began,
    and keeps them in a file (with the wall-clock time, to match the processes' logs)."""

    def __init__(self, log: Path) -> None:
        self.began = time.monotonic()
        self._lock = threading.Lock()
        self._log = log.open("a", buffering=1)

    def elapsed(self) -> float:
        """Seconds since the soak began."""
        return time.monotonic() - self.began

    def say(self, text: str) -> None:
        """Print one line, stamped."""
        self._print(text, sys.stdout)

    def warn(self, text: str) -> None:
        """Print one line on stderr, stamped."""
        self._print(f"! {text}", sys.stderr)

    def _print(self, text: str, out: TextIO) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        with self._lock:
            print(line, file=out, flush=True)
            self._log.write(f"{time.time():.3f} {line}\n")

    def close(self) -> None:
        """Close the file."""
        self._log.close()
