"""Progress of long work, reported by plain functions and shown by whoever called them.

The task turns reports into Celery PROGRESS states (throttled); the CLI turns them into a Rich bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Progress:
    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    def as_meta(self) -> dict[str, object]:
        return asdict(self)


ProgressFn = Callable[[Progress], None]


def ignore(_: Progress) -> None:
    """A progress sink for callers that do not show progress."""


class Throttled:
    """Forwards at most one report per `interval` seconds, plus every phase change."""

    def __init__(self, sink: ProgressFn, interval: float = 0.5) -> None:
        self._sink = sink
        self._interval = interval
        self._last = 0.0
        self._phase = ""

    def __call__(self, report: Progress) -> None:
        now = time.monotonic()
        if report.phase != self._phase or now - self._last >= self._interval:
            self._phase, self._last = report.phase, now
            self._sink(report)
