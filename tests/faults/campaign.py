"""The fault campaign: rounds of real backups, one injected fault each, and the invariants after.

Each round requests a JSON or PostgreSQL backup through the running stack (tests/faults/stack.py),
injects one fault at a random moment, waits for the stack to settle, checks every invariant,
requests one more backup of the same kind (it must end verified), and checks again. Faults:

    pool_kill      SIGKILL of a worker's pool process (whatever it is running)
    worker_kill    SIGKILL of a worker's main process (`up` restarts it)
    pg_dump_kill   SIGKILL of a pg_dump or psql of a running dump
    redis_outage   Redis gone for 2-40 s (`--max-outage`), then back with its data
    pg_restart     PostgreSQL fast restart (every session terminated)
    disk_full      the repository's file system filled for 2-8 s

Invariants (a violation is any of these):

    bad_verified   a backup is `verified` whose archive does not verify against its manifest
    stranded       a backup is still `running` or `created` once the stack settled
    stale_lock     a lock outlives its (provably dead) holder by more than a few seconds
    next_backup    the backup requested after the fault does not end verified
    outside        anything written outside the repository (TMPDIR of the stack, the app folder)
    modes          a file in the repository not 0600, a folder not 0700
    stack_down     `up` or one of its children is not running once settled

Run it alone for a long campaign (a summary line per round, and the totals):

    .venv/bin/python -m tests.faults.campaign --rounds 102 --seed 19
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery.result import AsyncResult

from lifeos_backup.app.client import BackupFailed, make_app, request_backup
from lifeos_backup.core.settings import get_settings
from lifeos_backup.formats.manifest import read_manifest
from lifeos_backup.jobs.backups import check_files, locate
from lifeos_backup.jobs.leases import LeaseBusy, lease
from lifeos_backup.jobs.locks import PREFIX, Holder
from lifeos_backup.jobs.redelivery import pending_task_ids
from lifeos_backup.storage.catalog import Catalog, open_catalog
from lifeos_backup.storage.catalog.store import CREATED, RUNNING, VERIFIED
from tests.faults.stack import Proc, Stack

FAULTS = ("pool_kill", "worker_kill", "pg_dump_kill", "redis_outage", "pg_restart", "disk_full")
SETTLE = 360.0  # seconds a round may take to settle (a lost chain waits for the sweeper)
LOCK_SLACK = 15.0  # seconds a dead holder's lock may outlive it (a heartbeat reaps it)


@dataclass
class Round:
    number: int
    fault: str
    kind: str
    detail: str = ""
    where: str = ""  # what the round's chain was doing when the fault hit
    injected: bool = False
    settled_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    def line(self, total: int) -> str:
        verdict = "ok" if not self.violations else "; ".join(self.violations)
        hit = self.detail if self.injected else f"missed ({self.detail})"
        return (
            f"round {self.number}/{total}: {self.fault} during {self.kind} backup: {hit}; "
            f"settled in {self.settled_s:.1f} s; {verdict}"
        )


@dataclass
class Report:
    rounds: list[Round] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [f"round {r.number}: {v}" for r in self.rounds for v in r.violations]

    def summary(self) -> str:
        injected = Counter(r.fault for r in self.rounds if r.injected)
        steps = Counter(r.where.split()[0] for r in self.rounds if r.injected and r.where)
        return (
            f"rounds: {len(self.rounds)}; faults injected: {sum(injected.values())} "
            f"({', '.join(f'{k} {injected[k]}' for k in FAULTS if injected[k])}); "
            f"hit during: {', '.join(f'{k} {n}' for k, n in sorted(steps.items()))}; "
            f"invariant violations: {len(self.violations)}"
        )


class Campaign:
    def __init__(self, stack: Stack, seed: int, max_outage: float, say: Callable[[str], None]):
        self.stack = stack
        self.rng = random.Random(seed)
        self.max_outage = max_outage
        self.say = say
        self.app = make_app(stack.settings_env()["LIFEOS_REDIS_URL"])
        self.client = redis.Redis.from_url(
            stack.settings_env()["LIFEOS_REDIS_URL"], socket_timeout=5, socket_connect_timeout=5
        )
        self.app_digest = _tree_digest(stack.app_dir)
        self._moment: Callable[[], str] = lambda: "before the round"
        self.chain_s = {"json": 2.0, "postgres": 2.0}  # measured by the first backups
        self.kind = "json"

    @property
    def catalog(self) -> Catalog:
        return open_catalog(get_settings().effective_catalog_url)

    def run(self, rounds: int) -> Report:
        report = Report()
        for kind in ("json", "postgres"):  # a good backup of each first: nothing is overdue
            began = time.monotonic()
            self._backup_until_verified(kind)
            self.chain_s[kind] = time.monotonic() - began
        self.say(f"chain times (create + verify): {self.chain_s}")
        order: list[str] = []
        for number in range(1, rounds + 1):
            if not order:
                order = list(FAULTS)
                self.rng.shuffle(order)
            fault = order.pop()
            kind = (
                "postgres"
                if fault in ("pg_dump_kill", "pg_restart")
                else self.rng.choice(("json", "postgres"))
            )
            result = self.round(number, fault, kind)
            report.rounds.append(result)
            self.say(result.line(rounds))
        return report

    # ------------------------------------------------------------------ one round

    def round(self, number: int, fault: str, kind: str) -> Round:
        result = Round(number, fault, kind)
        self.kind = kind
        ref = request_backup(kind, f"fault round {number}", app=self.app, initiator="campaign")
        steps = {"create": ref.create_task_id, "verify": ref.verify_task_id,
                 "upload": ref.upload_task_id, "rotate": ref.rotate_task_id}  # fmt: skip
        self._until_started(ref.create_task_id)
        self._moment = lambda: _where(self.app, steps)
        getattr(self, f"_{fault}")(result)
        chain = set(steps.values())
        started = time.monotonic()
        result.violations += self._settle(chain)
        result.settled_s = time.monotonic() - started
        result.violations += self._invariants()
        try:
            after = self._backup_until_verified(kind)
        except BackupFailed as exc:
            result.violations.append(f"next_backup: {exc}")
            after = set()
        result.violations += self._settle(after)
        result.violations += self._invariants()
        return result

    def _backup_until_verified(self, kind: str) -> set[str]:
        """One more backup, ending verified; returns its chain's task ids. A request skipped
        because another backup of the kind runs (a retry of the round's) is asked again."""
        for _attempt in range(5):
            try:
                ref = request_backup(kind, "after fault", wait=True, timeout=300, app=self.app)
                return {ref.create_task_id, ref.verify_task_id, ref.upload_task_id,
                        ref.rotate_task_id}  # fmt: skip
            except BackupFailed as exc:
                if "already running" not in str(exc):
                    raise
                time.sleep(3)
        raise BackupFailed(f"{kind} backup skipped five times: another one kept running")

    def _until_started(self, task_id: str, most: float = 10) -> None:
        """Faults land at a random moment after the backup's create began."""
        deadline = time.monotonic() + most
        while AsyncResult(task_id, app=self.app).state == "PENDING":
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    # ------------------------------------------------------------------ faults

    def _pause(self) -> None:
        """A moment within the chain's usual run time (create through verify)."""
        time.sleep(self.rng.uniform(0, self.chain_s[self.kind]))

    def _hit(self, result: Round, what: str, where: str | None = None) -> None:
        """Record the fault and what the round's chain was doing at that moment."""
        result.injected = True
        result.where = where or self._moment()
        result.detail = f"{what} ({result.where})"

    def _kill(self, pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def _kill_one_of(self, result: Round, find: Callable[[], list[Proc]], what: str) -> None:
        self._pause()
        candidates = find()
        victim = self.rng.choice(candidates) if candidates else None
        where = self._moment()
        if victim is not None and self._kill(victim.pid):
            self._hit(result, f"{what} {victim.pid} killed", where)

    def _pool_kill(self, result: Round) -> None:
        self._kill_one_of(result, self.stack.pool_processes, "pool process")

    def _worker_kill(self, result: Round) -> None:
        self._kill_one_of(result, self.stack.worker_mains, "worker main process")

    def _pg_dump_kill(self, result: Round) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            dumps = self.stack.dump_processes()
            if dumps:
                victim = self.rng.choice(dumps)
                where = self._moment()
                if self._kill(victim.pid):
                    self._hit(result, f"{victim.name} {victim.pid} killed", where)
                    return
                continue
            time.sleep(0.01)
        result.detail = "no pg_dump ran"

    def _redis_outage(self, result: Round) -> None:
        self._pause()
        seconds = self.rng.uniform(2, self.max_outage)
        assert self.stack.redis is not None
        self._hit(result, f"Redis gone for {seconds:.1f} s")
        self.stack.redis.halt()
        time.sleep(seconds)
        self.stack.redis.start()

    def _pg_restart(self, result: Round) -> None:
        self._pause()
        assert self.stack.cluster is not None
        self._hit(result, "PostgreSQL restarted (fast)")
        self.stack.cluster.restart()

    def _disk_full(self, result: Round) -> None:
        if not self.stack.tmpfs:
            result.detail = "no tmpfs (not root): skipped"
            return
        self._pause()
        seconds = self.rng.uniform(2, 8)
        self._hit(result, f"repository full for {seconds:.1f} s")
        filler = self.stack.root / ".campaign-filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            block = b"\0" * (1 << 20)
            while True:  # until the file system is full (ENOSPC)
                handle.write(block)
                handle.flush()
        time.sleep(seconds)
        filler.unlink()

    # ------------------------------------------------------------------ settling and invariants

    def _settle(self, chain: set[str]) -> list[str]:
        """Wait until the stack runs, no backup is running or created, and no message of the
        round's chain is pending."""
        deadline = time.monotonic() + SETTLE
        problem = ""
        while time.monotonic() < deadline:
            problem = self._unsettled(chain)
            if not problem:
                return []
            time.sleep(1)
        kind = "stack_down" if problem.startswith("stack") else "stranded"
        return [f"{kind}: {problem} after {SETTLE:.0f} s"]

    def _unsettled(self, chain: set[str]) -> str:
        if not self.stack.children_alive():
            return "stack: `up` or a child is not running"
        try:
            pending = pending_task_ids(self.client) & chain
        except redis.RedisError as exc:
            return f"stack: Redis does not answer ({exc})"
        busy = [r.id for r in self.catalog.list(statuses=(RUNNING, CREATED))]
        if busy:
            return f"backups {busy} still running or created"
        if pending:
            return f"tasks {sorted(pending)} still pending"
        return ""

    def _invariants(self) -> list[str]:
        return [
            *self._bad_verified(),
            *self._stale_locks(),
            *self._outside(),
            *self._modes(),
        ]

    def _bad_verified(self) -> list[str]:
        settings, found = get_settings(), []
        for row in self.catalog.list(statuses=(VERIFIED,)):
            try:
                with lease(settings.backup_root, row.id, "campaign", "check"):
                    _row, archive, mpath = locate(settings, self.catalog, row.id)
                    check_files(settings, archive, read_manifest(mpath))
            except LeaseBusy:
                continue  # being verified or rotated now: judged in a later check
            except Exception as exc:
                if self.catalog.get(row.id).status == VERIFIED:  # not rotated meanwhile
                    found.append(f"bad_verified: {row.id}: {exc}")
        return found

    def _stale_locks(self) -> list[str]:
        deadline = time.monotonic() + LOCK_SLACK
        while True:
            dead = []
            for key in self.client.scan_iter(match=PREFIX + "*"):
                holder = Holder.parse(self.client.get(key))
                if holder is not None and holder.provably_dead():
                    dead.append(f"{key.decode()} held by {holder.describe()}")
            if not dead or time.monotonic() > deadline:
                return [f"stale_lock: {d}" for d in dead]
            time.sleep(1)

    def _outside(self) -> list[str]:
        found = []
        left = sorted(p.name for p in self.stack.tmpdir.iterdir())
        if left:
            found.append(f"outside: left in the stack's TMPDIR: {left}")
        if _tree_digest(self.stack.app_dir) != self.app_digest:
            found.append("outside: the app folder changed")
        return found

    def _modes(self) -> list[str]:
        found = []
        for folder, dirs, files in os.walk(self.stack.root):
            for name in dirs:
                path = Path(folder, name)
                if stat.S_IMODE(path.lstat().st_mode) != 0o700:
                    found.append(f"modes: {path} is {oct(stat.S_IMODE(path.lstat().st_mode))}")
            for name in files:
                path = Path(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if path.is_symlink():  # catalog.sqlite3 points at the current catalog file
                        continue
                    if stat.S_IMODE(path.lstat().st_mode) != 0o600:
                        found.append(f"modes: {path} is {oct(stat.S_IMODE(path.lstat().st_mode))}")
        return found[:5]


def _where(app: Any, steps: dict[str, str]) -> str:
    """The chain's first step that has not succeeded, and its state: where a fault landed."""
    for name, task_id in steps.items():
        result = AsyncResult(task_id, app=app)
        try:
            state = result.state
        except Exception:  # Redis gone: the fault itself
            return "state unknown"
        if state != "SUCCESS":
            phase = result.info.get("phase") if state == "PROGRESS" and result.info else None
            return f"{name} {state.lower()}{f' ({phase})' if phase else ''}"
    return "chain done"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def running_stack(work: Path, big: bool = True):  # type: ignore[no-untyped-def]
    """A started stack whose settings this process uses too (catalog, checks)."""
    stack = Stack(work, big)
    saved = {k: v for k, v in os.environ.items() if k.startswith("LIFEOS_")}
    try:
        stack.start()
        for key in saved:
            del os.environ[key]
        os.environ.update(stack.settings_env())
        get_settings.cache_clear()
        yield stack
    finally:
        stack.stop()
        for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
            del os.environ[key]
        os.environ.update(saved)
        get_settings.cache_clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=len(FAULTS))
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--max-outage", type=float, default=40.0, help="longest Redis outage, s")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp one)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lifeos-faults-"))
    started = time.monotonic()
    with running_stack(work) as stack:
        report = Campaign(stack, args.seed, args.max_outage, print).run(args.rounds)
    print(report.summary())
    print(f"wall time: {(time.monotonic() - started) / 60:.1f} min; seed {args.seed}")
    for violation in report.violations:
        print(f"violation: {violation}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
