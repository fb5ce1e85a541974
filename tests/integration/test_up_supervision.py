"""`lifeos-backup up` outlives Redis outages and the death of any child (real processes).

Every wait is for an event (a line of `up`, a PING) with a generous deadline; nothing asserts
that something was fast. The outage itself lasts OUTAGE seconds, longer than the outage that
used to stop the whole stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.test_up import CLI, RUNNING, UpProcess, _alive, _env, _processes_with_env
from tests.support.services import StoppableRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTAGE = 27.0  # seconds Redis is away
PASSWORD = "pw-outage-9s3cret"
CHILDREN = ("worker-dumps", "worker", "beat", "flower")
EXIT_LINE = r"exited unexpectedly \((exit \d+|killed by \w+).*\); restarting in \d+ s \(log: "


class Up(UpProcess):
    """UpProcess that also finds lines it has already read, and tracks each child's pid."""

    def drain(self) -> None:
        """Move the lines printed so far into `lines`, without waiting."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def seen(self, text: str, timeout: float) -> str:
        self.drain()
        already = [line for line in self.lines if text in line]
        return already[-1] if already else self.wait_for(text, timeout)

    def pids(self) -> dict[str, int]:
        """The newest pid of each child, from the "Started" line and later "restarted" lines."""
        self.drain()
        found: dict[str, int] = {}
        for line in self.lines:
            if line.startswith("Started "):
                found.update({n: int(p) for n, p in re.findall(r"([\w-]+) \(pid (\d+)\)", line)})
            match = re.match(r"([\w-]+) (?:re)?started \(pid (\d+)", line)
            if match:
                found[match.group(1)] = int(match.group(2))
        return found

    def finish(self) -> str:
        """SIGINT; `up` must exit 0. Returns its stderr."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=90) == 0, self.lines
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def outage_redis() -> Iterator[StoppableRedis]:
    server = StoppableRedis(password=PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def cleanup() -> Iterator[list[dict[str, str]]]:
    """Envs of the `up`s a test started; whatever they left running is killed afterwards."""
    envs: list[dict[str, str]] = []
    yield envs
    for env in envs:
        for pid in _processes_with_env(f"LIFEOS_BACKUP_ROOT={env['LIFEOS_BACKUP_ROOT']}"):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _backup_succeeds(env: dict[str, str], cwd: Path) -> None:
    result = _cli(env, cwd, "backup", "json", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"json_backup_\d{8}_\d{6}", result.stdout.strip().splitlines()[-1])


def _all_alive(up: Up) -> None:
    pids = {name: pid for name, pid in up.pids().items() if name != "redis"}
    assert set(pids) == set(CHILDREN), up.lines
    dead = {name: pid for name, pid in pids.items() if not _alive(pid)}
    assert not dead, "\n".join([str(dead), *up.lines])


def test_up_rides_out_a_redis_outage(
    tmp_path: Path, outage_redis: StoppableRedis, cleanup: list[dict[str, str]]
) -> None:
    # Beat ticks (and extends its RedBeat lock) every 5 s, so the outage reaches it.
    env = _env(
        tmp_path,
        LIFEOS_REDIS_URL=outage_redis.url(),
        LIFEOS_BEAT_MAX_INTERVAL="5",
        LIFEOS_METRICS_PORT="0",
    )
    cleanup.append(env)
    marker = Path(env["LIFEOS_BACKUP_ROOT"]) / ".state" / "broker-unreachable"
    up = Up(env, tmp_path)
    try:
        up.wait_for(RUNNING, timeout=90)
        before = up.pids()

        outage_redis.halt()
        halted = time.monotonic()
        down = up.wait_for("unreachable since", timeout=60)
        assert f"Redis at redis://:***@127.0.0.1:{outage_redis.port}/0 unreachable since" in down
        since = re.search(r"since (\S+):", down).group(1)  # type: ignore[union-attr]
        assert marker.read_text().strip() == since
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600

        # `status` sees the outage too: critical, since the time `up` noted.
        status = _cli(env, tmp_path, "status", "--json", timeout=60)
        assert status.returncode == 2, status.stderr
        report = json.loads(status.stdout)
        found = [c for c in report["conditions"] if c["name"] == "broker_unreachable"]
        assert found and found[0]["severity"] == "critical", report["conditions"]
        assert found[0]["summary"] == f"broker unreachable since {since}"
        assert report["broker"]["reachable"] is False and report["broker"]["since"] == since
        assert PASSWORD not in status.stdout + status.stderr

        time.sleep(max(0.0, OUTAGE - (time.monotonic() - halted)))  # the outage's length
        assert up.proc.poll() is None, up.lines
        outage_redis.start()
        up.wait_for("answers again after", timeout=60)
        assert not marker.exists()

        # Every child runs again: Beat crashed on its lock and was restarted (or rode it out).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(_alive(p) for p in up.pids().values()):
            time.sleep(1)
        _all_alive(up)
        assert up.pids()["worker"] == before["worker"]  # workers reconnect by themselves
        assert up.pids()["worker-dumps"] == before["worker-dumps"]
        _backup_succeeds(env, tmp_path)

        status = _cli(env, tmp_path, "status", "--json", timeout=60)
        report = json.loads(status.stdout)
        assert report["broker"]["reachable"] is True, report["broker"]
        assert not [c for c in report["conditions"] if c["name"] == "broker_unreachable"]
        stderr = up.finish()
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    output = "\n".join(up.lines) + stderr
    assert PASSWORD not in output
    assert "Traceback" not in output
    for line in up.lines:
        if "exited unexpectedly" in line:  # one line each, with a reason and the delay
            assert re.search(EXIT_LINE, line), line
            assert "WARNING/MainProcess" not in line


def test_up_waits_for_redis_that_is_not_there_yet(
    tmp_path: Path, cleanup: list[dict[str, str]]
) -> None:
    server = StoppableRedis(password=PASSWORD, start=False)
    env = _env(tmp_path, LIFEOS_REDIS_URL=server.url(), LIFEOS_METRICS_PORT="0")
    cleanup.append(env)
    up = Up(env, tmp_path)
    try:
        line = up.wait_for("cannot reach Redis at", timeout=60)
        assert line.startswith(f"cannot reach Redis at redis://:***@127.0.0.1:{server.port}/0: "), (
            line
        )
        assert re.search(r"; retrying every \d+ s \(Ctrl-C stops\)$", line), line
        # Still waiting after its next attempts: nothing started, nothing exited.
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            assert up.proc.poll() is None, up.lines
            time.sleep(0.5)
        started = _processes_with_env(f"LIFEOS_BACKUP_ROOT={env['LIFEOS_BACKUP_ROOT']}")
        assert started == [up.proc.pid], up.lines  # `up` itself, no child yet

        server.start()
        up.wait_for("answers after", timeout=60)
        up.wait_for(RUNNING, timeout=90)
        assert [ln for ln in up.lines if ln.startswith("Started ")]
        _all_alive(up)
        stderr = up.finish()
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
        server.stop()
    assert PASSWORD not in "\n".join(up.lines) + stderr


def test_up_restarts_killed_children_and_its_embedded_redis(
    tmp_path: Path, cleanup: list[dict[str, str]]
) -> None:
    env = _env(tmp_path, LIFEOS_METRICS_PORT="0")
    cleanup.append(env)
    up = Up(env, tmp_path)
    try:
        up.wait_for(RUNNING, timeout=90)
        url = re.search(r"embedded at (\S+)", up.line_with("Redis:")).group(1)  # type: ignore[union-attr]
        for name in ("beat", "flower", "worker"):
            old = up.pids()[name]
            os.kill(old, signal.SIGKILL)  # the main process only
            died = up.wait_for(f"{name} exited unexpectedly", timeout=60)
            assert "killed by SIGKILL" in died and "restarting in 1 s" in died, died
            up.wait_for(f"{name} restarted (pid", timeout=60)
            assert up.pids()[name] != old
            assert _group_gone(old), f"processes of {name}'s old group still run"  # its pool

        redis_pid = _redis_pid(url)
        os.kill(redis_pid, signal.SIGKILL)
        up.seen("redis exited unexpectedly (killed by SIGKILL", timeout=60)
        up.seen("redis restarted (pid", timeout=60)
        with redis.Redis.from_url(url, socket_timeout=5) as client:  # the same port again
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        break
                except redis.RedisError:
                    time.sleep(0.5)
        _all_alive(up)
        _backup_succeeds(env, tmp_path)
        assert up.proc.poll() is None
        stderr = up.finish()
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert "Traceback" not in stderr


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    """True once no live (non-zombie) process is left in process group `pgid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(stat_file.parent.name)
        if not members:
            return True
        time.sleep(0.5)
    return False


def _redis_pid(url: str) -> int:
    """The pid of the redis-server listening on the URL's port (it reports it itself)."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return int(client.info("server")["process_id"])


def test_up_runs_on_while_flowers_and_the_metrics_ports_are_taken(
    tmp_path: Path, cleanup: list[dict[str, str]]
) -> None:
    holder, metrics_holder = socket.socket(), socket.socket()
    for sock in (holder, metrics_holder):
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    port, metrics_port = holder.getsockname()[1], metrics_holder.getsockname()[1]
    env = _env(tmp_path, LIFEOS_METRICS_PORT=str(metrics_port))
    env["LIFEOS_FLOWER_PORT"] = str(port)
    cleanup.append(env)
    up = Up(env, tmp_path)
    try:
        warned = up.wait_for("metrics endpoint not started", timeout=90)
        assert warned.startswith("warning:") and str(metrics_port) in warned, warned
        line = up.seen("flower cannot start", timeout=90)
        assert f"cannot listen on 127.0.0.1:{port}" in line, line
        assert re.search(r"retrying in \d+ s \(the rest runs on\)", line), line
        _backup_succeeds(env, tmp_path)  # workers and Beat run without Flower
        assert up.proc.poll() is None
        holder.close()
        up.seen("flower started (pid", timeout=120)
        up.wait_for(RUNNING, timeout=90)
        stderr = up.finish()
    finally:
        holder.close()
        metrics_holder.close()
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert "Traceback" not in stderr
