"""Progress of long work, reported by plain functions and shown by whoever called them.

The task turns reports into Celery PROGRESS states (throttled); the CLI turns them into a Rich bar.
"""

from __future__ import annotations

import threading
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


class Background:
    """Hands reports to `publish` on a thread of its own, newest first, never blocking the work.

    Publishing goes over the network (a Celery PROGRESS state in Redis); while Redis does not
    answer, the job must go on, and only the newest report matters once it answers again.
    `close()` waits for a publish in flight and drops the rest, so no PROGRESS lands after the
    task's own final state.
    """

    def __init__(self, publish: Callable[[dict[str, object]], None]) -> None:
        self._publish = publish
        self._newest: dict[str, object] | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __call__(self, report: Progress) -> None:
        with self._cond:
            if self._closed:
                return
            self._newest = report.as_meta()  # a copy: the caller goes on changing `report`
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._newest is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                meta, self._newest, self._busy = self._newest, None, True
                assert meta is not None  # the loop above waits for a report or returns
            try:
                self._publish(meta)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._newest = None
            self._cond.notify_all()
            while self._busy:
                self._cond.wait()
