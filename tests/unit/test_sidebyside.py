"""run_side_by_side: the first failure stops the other commands at once and is the one raised."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from lifeos_backup.core import procs
from lifeos_backup.core.errors import CommandFailed
from lifeos_backup.core.sidebyside import Crew, run_side_by_side


def _long(crew: Crew) -> None:
    with procs.spawn(["sleep", "30"]) as proc:
        crew.track(proc)
        assert proc.stdout is not None
        proc.stdout.read()


def _fails_soon(crew: Crew) -> None:
    time.sleep(0.3)
    procs.run(["sh", "-c", "echo broken >&2; exit 3"])


def test_first_failure_stops_the_others_and_is_raised() -> None:
    start = time.monotonic()
    with pytest.raises(CommandFailed, match="exit 3") as caught:
        run_side_by_side([_long, _fails_soon, _long], workers=3, interval=0.05)
    assert time.monotonic() - start < 25  # not the 30 s of the sleeps (loose: a loaded host)
    assert "broken" in caught.value.detail


def test_jobs_beyond_the_workers_wait_and_all_run() -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def job(n: int, crew: Crew) -> None:
        procs.run(["true"])
        with lock:
            ran.append(n)

    ticks: list[int] = []
    jobs = [lambda crew, n=n: job(n, crew) for n in range(5)]
    run_side_by_side(jobs, workers=2, tick=lambda: ticks.append(1), interval=0.01)
    assert sorted(ran) == [0, 1, 2, 3, 4] and ticks


def test_queued_jobs_do_not_start_after_a_failure() -> None:
    started: list[str] = []

    def failing(crew: Crew) -> None:
        started.append("failing")
        raise ValueError("first")

    def later(crew: Crew) -> None:
        started.append("later")

    with pytest.raises(ValueError, match="first"):
        run_side_by_side([failing, later, later], workers=1, interval=0.01)
    assert started == ["failing"]


def test_a_follow_up_job_starts_before_the_jobs_still_waiting() -> None:
    order: list[str] = []

    def first(crew: Crew) -> None:
        order.append("first")
        crew.next(lambda _crew: order.append("follow-up"))

    def plain(name: str) -> Callable[[Crew], None]:
        return lambda _crew: order.append(name)

    run_side_by_side([first, plain("a"), plain("b")], workers=1, interval=0.01)
    assert order == ["first", "follow-up", "a", "b"]
    order.clear()
    run_side_by_side([plain("a"), first], workers=2, interval=0.01)  # last job's follow-up
    assert sorted(order) == ["a", "first", "follow-up"]


def test_a_job_is_shared_while_another_runs_or_waits_for_a_second_worker() -> None:
    """A restore's index build asks this to choose between a parallel build and one process."""
    seen: dict[str, bool] = {}
    both = threading.Barrier(2, timeout=5)

    def beside(name: str) -> Callable[[Crew], None]:
        def run(crew: Crew) -> None:
            both.wait()  # both running: each shares the machine
            seen[name] = crew.shared()
            both.wait()

        return run

    def last(crew: Crew) -> None:
        seen["last"] = crew.shared()

    run_side_by_side([beside("a"), beside("b")], workers=2, interval=0.01)
    run_side_by_side([last], workers=2, interval=0.01)  # alone: one job for two workers
    assert seen == {"a": True, "b": True, "last": False}


def test_waiting_jobs_share_the_machine_only_with_a_second_worker() -> None:
    seen: list[bool] = []
    run_side_by_side(
        [lambda crew: seen.append(crew.shared()), lambda _c: None], workers=1, interval=0.01
    )
    gate = threading.Event()

    def first(crew: Crew) -> None:
        seen.append(crew.shared())  # the second job waits for the other worker, or runs
        gate.set()

    run_side_by_side([first, lambda _c: gate.wait(5)], workers=2, interval=0.01)
    assert seen == [False, True]
