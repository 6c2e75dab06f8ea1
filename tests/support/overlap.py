"""How many runs were under way at once, from the start and end times the runs noted."""

from __future__ import annotations

from collections.abc import Iterable


def most_at_once(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one instant; one that ends as another starts
    is not counted with it."""
    spans = list(intervals)
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most
