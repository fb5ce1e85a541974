"""The WAL stream: `pg_receivewal` kept running, and what it receives sealed into the WAL archive.

archive_command ships only whole segments, so its recovery point is bounded by archive_timeout.
pg_receivewal (PostgreSQL's own receiver, a replication client on a physical slot) gets every
WAL record within milliseconds of its write. It writes into a spool folder: the current segment
as `<segment>.partial`, renamed to `<segment>` once complete. The sealer turns the spool into the
archive that `lifeos-wal push` fills, in the same format (lifeos_backup.wal.archive):

- a finished segment (or timeline history file) is pushed exactly like archive_command pushes
  it: same content already archived is a no-op (archive_command and the stream both deliver
  every segment), different content is an alarm: the streamed copy is moved to
  `<spool>/rejected/`, recorded in the status file (health reports it) and said in the log; the
  archived file is never replaced;
- the unfinished segment is kept as `<segment>.partial.zst`, replaced by a newer copy whenever
  the spool's file changed (temporary name, fsync, rename: never half-written). restore_command
  serves it under the full name when no finished copy exists, so recovery reaches the last
  record received;
- a spool file that cannot be what pg_receivewal writes (a finished segment of an impossible
  size, or a `.partial` torn while it was being zero-filled) is moved to `<spool>/rejected/` too:
  the first would archive a broken segment, the second makes pg_receivewal refuse to start.

`run` supervises pg_receivewal (`--no-loop`: our restart with backoff, a line per exit) and seals
every POLL seconds; on a stop it ends pg_receivewal (which flushes) and seals one last time. One
lock (`.wal-stream.lock` in the archive) serialises sealers, so an older copy of the unfinished
segment never replaces a newer one (`restore pitr` seals once itself before it starts).

Standard library and lifeos_backup.wal only: the callers (the CLI, `up`) turn the settings into a
StreamConfig (lifeos_backup.kinds.basebackup.streaming).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifeos_backup.core.procs import die_with_parent_hook
from lifeos_backup.wal import archive as wal
from lifeos_backup.wal.names import ARCHIVABLE, SEGMENT
from lifeos_backup.wal.segment import ArchiveConflict, WalError

STATUS_FILE = ".wal-stream.json"  # in the archive: read by health and `wal slot status`
LOCK_FILE = ".wal-stream.lock"
REJECTED = "rejected"  # spool subfolder: streamed files that were not archived, kept for a look
POLL = 0.5  # seconds between seal passes
STATUS_INTERVAL = 1  # pg_receivewal --status-interval: the primary's view of the lag stays fresh
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_RUN = 60.0  # a run this long was no quick death: the restart delay starts over
STOP_GRACE = 10.0  # seconds pg_receivewal gets to flush and exit on SIGTERM
SETTLED = 5.0  # seconds a restarted pg_receivewal runs before it counts as back (notify)
SLOT_TIMEOUT = 30.0  # seconds for `pg_receivewal --create-slot`
KEPT_CONFLICTS = 20
MIN_SEGMENT, MAX_SEGMENT = 1 << 20, 1 << 30  # PostgreSQL's wal_segment_size bounds
SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")  # what PostgreSQL accepts as a slot name

Say = Callable[[str], None]


@dataclass(frozen=True)
class StreamConfig:
    """Everything the stream needs; the password travels in `env` (PGPASSWORD), never argv."""

    receivewal: str  # path of pg_receivewal
    conninfo: str  # without the password; application_name is the slot's name
    spool: Path
    archive: Path
    slot: str
    synchronous: bool = False
    level: int = wal.DEFAULT_LEVEL
    recipients: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not SLOT_NAME.match(self.slot):
            raise WalError(
                f"{self.slot!r} is not a replication slot name",
                "PostgreSQL allows lower-case letters, digits and underscores, at most 63",
                "set LIFEOS_WAL_SLOT to e.g. lifeos_backup",
            )


def receivewal_args(cfg: StreamConfig) -> list[str]:
    """pg_receivewal streaming into the spool on our slot; exits on a lost connection."""
    args = [
        cfg.receivewal,
        "--directory", str(cfg.spool),
        "--slot", cfg.slot,
        "--dbname", cfg.conninfo,
        "--no-loop",  # we restart it, with backoff and a line in the log
        "--no-password",  # never a prompt: the password comes from PGPASSWORD or .pgpass
        f"--status-interval={STATUS_INTERVAL}",
        "--verbose",
    ]  # fmt: skip
    if cfg.synchronous:
        args.append("--synchronous")  # fsync and acknowledge every write at once
    return args


def create_slot_args(cfg: StreamConfig) -> list[str]:
    """Create the physical slot unless it exists (pg_receivewal's own, then it exits)."""
    return [
        cfg.receivewal, "--slot", cfg.slot, "--dbname", cfg.conninfo, "--no-password",
        "--create-slot", "--if-not-exists",
    ]  # fmt: skip


# --------------------------------------------------------------------------- status file


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_status(archive: Path) -> dict[str, Any]:
    """The stream's record; missing or damaged reads as empty (it is health data)."""
    try:
        data = json.loads((archive / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_status(archive: Path, status: dict[str, Any]) -> None:
    """Temporary name + rename (not fsynced: health data, a crash loses the last update)."""
    status["updated_at"] = _now()
    tmp = archive / f"{wal.TEMP_PREFIX}{STATUS_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, wal.FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        json.dump(status, handle, indent=2, sort_keys=True)
    os.replace(tmp, archive / STATUS_FILE)


@contextlib.contextmanager
def locked(archive: Path) -> Iterator[None]:
    """The archive's stream lock: one sealer (or status writer) at a time."""
    wal.ensure_dir(archive)
    fd = os.open(archive / LOCK_FILE, os.O_RDWR | os.O_CREAT, wal.FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_status(archive: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the status file under the lock; returns the new status."""
    with locked(archive):
        status = read_status(archive)
        status.update(changes)
        _write_status(archive, status)
    return status


# --------------------------------------------------------------------------- sealing


@dataclass
class SealReport:
    """What one pass did."""

    sealed: list[str] = field(default_factory=list)  # finished files stored
    same: list[str] = field(default_factory=list)  # already archived with the same content
    conflicts: list[str] = field(default_factory=list)  # archived with different content
    rejected: list[str] = field(default_factory=list)  # not what pg_receivewal writes
    partial: str | None = None  # unfinished segment stored this pass


Memo = dict[str, tuple[int, int, int]]  # spool .partial -> (inode, size, mtime_ns) last stored


def _valid_size(size: int) -> bool:
    return MIN_SEGMENT <= size <= MAX_SEGMENT and size & (size - 1) == 0


def _reject(spool: Path, name: str, why: str) -> Path:
    """Move a spool file aside (never deleted: it may be the only copy of something)."""
    folder = spool / REJECTED
    folder.mkdir(mode=0o700, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    kept = folder / f"{name}.{stamp}"
    os.rename(spool / name, kept)
    (folder / f"{kept.name}.why").write_text(why + "\n")
    return kept


def torn_partials(spool: Path) -> list[str]:
    """`.partial` files of a size pg_receivewal never leaves: it zero-fills a new segment file
    to its full size before writing WAL, so a torn one holds no WAL, and pg_receivewal refuses
    to start on it ("has N bytes, should be 0 or 16777216")."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(spool):
            if entry.name.endswith(wal.PARTIAL) and entry.is_file(follow_symlinks=False):
                size = entry.stat().st_size
                if size != 0 and not _valid_size(size):
                    found.append(entry.name)
    return sorted(found)


def seal_spool(
    spool: Path,
    archive: Path,
    *,
    level: int = wal.DEFAULT_LEVEL,
    recipients: str | None = None,
    memo: Memo | None = None,
    say: Say = lambda _line: None,
) -> SealReport:
    """One pass: finished files into the archive (then out of the spool), the newest state of
    each unfinished segment beside them. Safe to run from several processes (the lock)."""
    report = SealReport()
    memo = {} if memo is None else memo
    if not spool.is_dir():
        return report
    with locked(archive):
        status = read_status(archive)
        conflicts: list[dict[str, Any]] = list(status.get("conflicts") or [])
        names = sorted(
            e.name
            for e in os.scandir(spool)
            if e.is_file(follow_symlinks=False) and ARCHIVABLE.match(e.name)
        )
        for name in names:
            if name.endswith(wal.PARTIAL) or name.endswith(".backup"):
                continue
            path = spool / name
            if SEGMENT.match(name) and not _valid_size(path.stat().st_size):
                why = f"{name} has {path.stat().st_size} bytes, not a WAL segment's size"
                kept = _reject(spool, name, why)
                report.rejected.append(name)
                conflicts.append({"name": name, "at": _now(), "kept": str(kept), "detail": why})
                say(f"WAL stream: {why}; not archived, kept as {kept}")
                continue
            try:
                pushed = wal.push(path, archive, level=level, recipients=recipients)
            except ArchiveConflict as exc:
                kept = _reject(spool, name, str(exc))
                report.conflicts.append(name)
                conflicts.append(
                    {"name": name, "at": _now(), "kept": str(kept), "detail": str(exc)}
                )
                say(f"ALARM WAL stream: {exc}; the streamed copy is kept as {kept}")
                continue
            (report.sealed if pushed.stored else report.same).append(name)
            if SEGMENT.match(name):
                with contextlib.suppress(FileNotFoundError):
                    wal.partial_path(archive, name).unlink()  # the finished copy supersedes it
                memo.pop(name + wal.PARTIAL, None)
                status["last_sealed"] = {"name": name, "at": _now(), "stored": pushed.stored}
            path.unlink()
        for name in names:
            if not name.endswith(wal.PARTIAL):
                continue
            segment = name.removesuffix(wal.PARTIAL)
            try:
                st = (spool / name).stat()
            except FileNotFoundError:  # pg_receivewal finished it meanwhile: the next pass
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not _valid_size(st.st_size) or (archive / (segment + wal.SUFFIX)).exists():
                continue  # torn (see torn_partials), or superseded by the finished segment
            if memo.get(name) == key and wal.partial_path(archive, segment).exists():
                continue
            stored = wal.store_partial(spool / name, archive, level=level, recipients=recipients)
            memo[name] = key
            report.partial = name
            status["partial"] = {"name": name, "at": _now(), "compressed": stored.compressed}
        conflicts = [c for c in conflicts if Path(str(c.get("kept", ""))).exists()]
        status["conflicts"] = conflicts[-KEPT_CONFLICTS:]
        if report.sealed or report.partial or report.conflicts or report.rejected:
            status["last_received_at"] = _now()
        _write_status(archive, status)
    return report


# --------------------------------------------------------------------------- supervision


@dataclass
class Receiver:
    """The running pg_receivewal, the last line it said, its restart schedule."""

    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    quick_failures: int = 0
    runs: int = 0
    last_line: str = ""
    told_down: bool = False  # notify("down") was called; notify("running") once it streams again

    def failed(self, now: float) -> float:
        """Schedule the next start: 1 s doubling to 30 s, from 1 s again after a long run."""
        if self.popen is not None and now - self.started >= STABLE_RUN:
            self.quick_failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self.quick_failures)
        self.quick_failures += 1
        self.restart_at = now + delay
        return delay


def _forward(stream: Any, receiver: Receiver, say: Say) -> None:
    """pg_receivewal's stderr, line by line, into our log; the last one kept for exit lines."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        if line:
            receiver.last_line = line
            say(f"pg_receivewal: {line}")
    stream.close()


def ensure_slot(cfg: StreamConfig) -> str | None:
    """Create the slot if missing; None when it exists, else why not (pg_receivewal's words)."""
    try:
        done = subprocess.run(
            create_slot_args(cfg), env={**os.environ, **cfg.env}, capture_output=True,
            stdin=subprocess.DEVNULL, timeout=SLOT_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create the slot: {exc}"
    if done.returncode == 0:
        return None
    said = " ".join(done.stderr.decode(errors="replace").split())
    return f"cannot create the slot {cfg.slot}: {said or f'exit {done.returncode}'}"


def start_receiver(cfg: StreamConfig, receiver: Receiver, say: Say) -> None:
    """Create the spool (0700), move torn partials aside, start pg_receivewal."""
    cfg.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cfg.spool, 0o700)
    for name in torn_partials(cfg.spool):
        size = (cfg.spool / name).stat().st_size
        kept = _reject(cfg.spool, name, f"torn while zero-filled: {size} bytes")
        say(f"WAL stream: {name} was torn ({size} bytes, holds no WAL); moved to {kept}")
    popen = subprocess.Popen(
        receivewal_args(cfg), env={**os.environ, **cfg.env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent_hook(),
    )  # fmt: skip
    receiver.popen, receiver.started, receiver.last_line = popen, time.monotonic(), ""
    receiver.runs += 1
    threading.Thread(
        target=_forward, args=(popen.stderr, receiver, say), name="receivewal-log", daemon=True
    ).start()


def stop_receiver(receiver: Receiver) -> None:
    """SIGTERM (pg_receivewal flushes and exits), SIGKILL after STOP_GRACE."""
    popen = receiver.popen
    if popen is None:
        return
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def _exit_text(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def _receiver_state(cfg: StreamConfig, state: str, **extra: Any) -> None:
    with contextlib.suppress(OSError):
        update_status(cfg.archive, receiver={"state": state, "since": _now(), **extra})


def supervise_once(
    cfg: StreamConfig, receiver: Receiver, say: Say, notify: Callable[[str], None]
) -> None:
    """Start pg_receivewal when due; on its exit say why and schedule the restart."""
    now = time.monotonic()
    popen = receiver.popen
    if popen is not None and (code := popen.poll()) is not None:
        delay = receiver.failed(now)
        words = f": {receiver.last_line}" if receiver.last_line else ""
        say(f"pg_receivewal exited ({_exit_text(code)}{words}); restarting in {delay:g} s")
        receiver.popen = None
        _receiver_state(cfg, "down", last_exit=f"{_exit_text(code)}{words}"[:500])
        if not receiver.told_down:
            receiver.told_down = True
            notify("down")
        return
    if popen is not None:
        if receiver.told_down and now - receiver.started >= SETTLED:
            receiver.told_down = False
            notify("running")
        return
    if now < receiver.restart_at:
        return
    why = ensure_slot(cfg)
    if why is None:
        try:
            start_receiver(cfg, receiver, say)
        except OSError as exc:
            why = f"cannot start {cfg.receivewal}: {exc}"
    if why is not None:
        receiver.popen = None
        delay = receiver.failed(now)
        say(f"WAL stream: {why}; retrying in {delay:g} s")
        _receiver_state(cfg, "down", last_exit=why[:500])
        if not receiver.told_down:
            receiver.told_down = True
            notify("down")
        return
    assert receiver.popen is not None
    say(f"pg_receivewal started (pid {receiver.popen.pid}, run {receiver.runs}, slot {cfg.slot})")
    _receiver_state(cfg, "running", pid=receiver.popen.pid)


def run(
    cfg: StreamConfig,
    stopped: Callable[[], bool],
    say: Say,
    notify: Callable[[str], None] = lambda _state: None,
    poll: float = POLL,
) -> None:
    """Until `stopped()`: keep pg_receivewal running and seal the spool every `poll` seconds.

    `notify(state)` is called when the receiver goes down or comes back, so the caller can have
    health alerts sent at once (the hourly check would be late for a synchronous setup, whose
    commits wait while the receiver is down).
    """
    receiver = Receiver()
    memo: Memo = {}
    failing = False
    try:
        while not stopped():
            supervise_once(cfg, receiver, say, notify)
            try:
                seal_spool(cfg.spool, cfg.archive, level=cfg.level, recipients=cfg.recipients,
                           memo=memo, say=say)  # fmt: skip
                if failing:
                    say("WAL stream: sealing works again")
                failing = False
            except (WalError, OSError) as exc:
                if not failing:  # once per episode, not every half second
                    say(f"WAL stream: sealing failed: {exc}")
                    with contextlib.suppress(OSError):
                        update_status(cfg.archive, last_error={"at": _now(), "error": str(exc)})
                failing = True
            time.sleep(poll)
    finally:
        stop_receiver(receiver)
        with contextlib.suppress(WalError, OSError):
            seal_spool(cfg.spool, cfg.archive, level=cfg.level, recipients=cfg.recipients,
                       memo=memo, say=say)  # fmt: skip
        _receiver_state(cfg, "stopped")
