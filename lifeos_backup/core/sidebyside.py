"""Running a few commands side by side in threads, all stopped at the first failure.

Parallel pg_dump parts and parallel pg_restore streams need the same thing: N workers, progress
ticks from the caller's thread, and on the first error every other command terminated, so that
the error surfaces at once instead of after the slowest command, and is the one reported. A job
may queue a follow-up to start before the jobs still waiting (a restore builds a big table's
indexes as soon as its rows are in, while other tables still load), and ask whether it shares
the workers with other jobs (that index build then takes one server process, not a parallel build).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence

from lifeos_backup.core.procs import Process

Job = Callable[["Crew"], None]


class Crew:
    """What the jobs share: the jobs not started yet, the commands to stop, and the first error."""

    def __init__(self, jobs: Sequence[Job], workers: int) -> None:
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque(jobs)
        self._procs: list[Process] = []
        self._workers = workers
        self._running = 0
        self.error: BaseException | None = None
        self.stopped = False

    def next(self, job: Job) -> None:
        """Start `job` before every job still waiting (on the first worker to come free)."""
        with self._lock:
            self._waiting.appendleft(job)

    def shared(self) -> bool:
        """Whether the calling job shares the machine: another job runs now, or one waits and
        another worker will take it."""
        with self._lock:
            return self._running > 1 or (bool(self._waiting) and self._workers > 1)

    def _take(self, done: bool = False) -> Job | None:
        """The next job for a free worker (`done`: it has just finished one)."""
        with self._lock:
            if done:
                self._running -= 1
            if self.stopped or not self._waiting:
                return None
            self._running += 1
            return self._waiting.popleft()

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
    jobs: Sequence[Job],
    workers: int,
    tick: Callable[[], None] = lambda: None,
    interval: float = 0.5,
) -> None:
    """Run `jobs` on `workers` threads, calling `tick` every `interval` seconds meanwhile.

    The first job to fail stops the others (their own errors are consequences) and its error is
    raised once all have ended; an interrupt of the caller (e.g. a task time limit) stops all too.
    """
    count = max(1, min(workers, len(jobs)))
    crew = Crew(jobs, count)

    def work() -> None:
        job = crew._take()
        while job is not None:
            try:
                job(crew)
            except BaseException as exc:
                crew.stop(exc)
            job = crew._take(done=True)

    threads = [threading.Thread(target=work, name=f"side-by-side-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(interval)
                tick()
    except BaseException as exc:
        crew.stop(exc)
        for thread in threads:
            thread.join()
        raise
    if crew.error is not None:
        raise crew.error
