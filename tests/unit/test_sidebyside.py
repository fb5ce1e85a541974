"""run_side_by_side: the first failure stops the other commands at once and is the one raised."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from lifeos_backup import procs
from lifeos_backup.errors import CommandFailed
from lifeos_backup.sidebyside import Apart, Crew, run_side_by_side


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
    assert time.monotonic() - start < 10  # not the 30 s of the sleeps
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


def test_a_free_worker_takes_a_job_of_another_group_first() -> None:
    """Two slices of one table would queue on its extension lock: the other table's goes beside."""
    started: list[str] = []
    other_started = threading.Event()

    def job(name: str) -> Callable[[Crew], None]:
        def run(_crew: Crew) -> None:
            started.append(name)
            if name == "u1":
                other_started.set()
            if name == "t1":
                assert other_started.wait(5), "the second worker took t2 beside t1"

        return run

    jobs = [Apart("t", job("t1")), Apart("t", job("t2")), Apart("u", job("u1"))]
    run_side_by_side(jobs, workers=2, interval=0.01)
    assert set(started[:2]) == {"t1", "u1"}
    assert started[2] == "t2"


def test_jobs_of_one_group_run_side_by_side_when_nothing_else_waits() -> None:
    both = threading.Barrier(2, timeout=5)
    run_side_by_side([Apart("t", lambda _c: both.wait()) for _ in range(2)], workers=2,
                     interval=0.01)
