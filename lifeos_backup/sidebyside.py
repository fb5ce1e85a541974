"""Running a few commands side by side in threads, all stopped at the first failure.

Parallel pg_dump parts and parallel pg_restore streams need the same thing: N workers, progress
ticks from the caller's thread, and on the first error every other command terminated, so that
the error surfaces at once instead of after the slowest command, and is the one reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from lifeos_backup.procs import Process


class Crew:
    """What the jobs share: the commands to stop, and the first error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[Process] = []
        self.error: BaseException | None = None
        self.stopped = False

    def track(self, proc: Process) -> None:
        """Register a job's command, so a failure elsewhere stops it."""
        with self._lock:
            self._procs.append(proc)
            stopped = self.stopped
        if stopped:
            _terminate(proc)

    def stop(self, error: BaseException | None = None) -> None:
        """Stop every command; the first error given is the one the crew raises."""
        with self._lock:
            if not self.stopped:
                self.error = error
            self.stopped = True
            live = list(self._procs)
        for proc in live:
            _terminate(proc)


def _terminate(proc: Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # spawn starts each child in its own group


def run_side_by_side(
    jobs: Sequence[Callable[[Crew], None]],
    workers: int,
    tick: Callable[[], None] = lambda: None,
    interval: float = 0.5,
) -> None:
    """Run `jobs` on `workers` threads, calling `tick` every `interval` seconds meanwhile.

    The first job to fail stops the others (their own errors are consequences) and its error is
    raised once all have ended; an interrupt of the caller (e.g. a task time limit) stops all too.
    """
    crew = Crew()

    def guarded(job: Callable[[Crew], None]) -> None:
        if crew.stopped:
            return
        try:
            job(crew)
        except BaseException as exc:
            crew.stop(exc)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="side-by-side") as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=interval)
                tick()
        except BaseException as exc:
            crew.stop(exc)
            raise
    if crew.error is not None:
        raise crew.error
