"""`lifeos-backup up` runs worker, Beat and Flower on an embedded Redis and stops them all cleanly.

Real processes: the CLI is run as operators run it, from a temp cwd so no `.env` is picked up.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLI = str(Path(sys.executable).parent / "lifeos-backup")
FLOWER_SECRET = "operator:s3cret-flower-pw"
RUNNING = "worker, beat and flower running"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's env minus every LIFEOS_/FLOWER_ setting (no LIFEOS_REDIS_URL), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFEOS_", "FLOWER_"))}
    app_dir = tmp_path / "app"
    (app_dir / "data").mkdir(parents=True, exist_ok=True)
    (app_dir / "data" / "a.json").write_text('{"a": 1}\n')
    env.update(
        LIFEOS_BACKUP_ROOT=str(tmp_path / "root"),
        LIFEOS_APP_DIR=str(app_dir),
        LIFEOS_FLOWER_PORT=str(free_port()),
    )
    env.setdefault("LIFEOS_DASHBOARD_PORT", "0")  # the tests that want the dashboard turn it on
    env.update(extra)
    return env


class UpProcess:
    """`lifeos-backup up` in the background; its stdout lines collected by a thread."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [CLI, "up"],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        self.proc.kill()
        _, stderr = self.proc.communicate(timeout=10)
        pytest.fail(f"no {text!r} from `up`; stdout: {self.lines}; stderr: {stderr}")

    def line_with(self, text: str) -> str:
        return next(line for line in self.lines if text in line)


def _processes_with_env(entry: str) -> list[int]:
    """Pids of live processes whose environment holds `entry` (every child `up` started)."""
    wanted = entry.encode()
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in (proc_dir / "environ").read_bytes().split(b"\0"):
                found.append(int(proc_dir.name))
    return found


def _cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _http_get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The env for `up`; afterwards, kill whatever a failed test left running."""
    env = _env(
        tmp_path, LIFEOS_FLOWER_BASIC_AUTH=FLOWER_SECRET, LIFEOS_DASHBOARD_PORT=str(free_port())
    )
    yield env
    for pid in _processes_with_env(f"LIFEOS_BACKUP_ROOT={env['LIFEOS_BACKUP_ROOT']}"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_up_runs_stack_on_embedded_redis_and_stops_cleanly(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    state = Path(up_env["LIFEOS_BACKUP_ROOT"]) / ".state"
    url_file = state / "embedded-redis.url"
    up = UpProcess(up_env, tmp_path)
    try:
        up.wait_for(RUNNING, timeout=45)

        # Embedded Redis: private URL file, answers PING, never the machine's own 6379.
        match = re.search(r"embedded at (redis://127\.0\.0\.1:(\d+)/0)", up.line_with("Redis:"))
        assert match, up.lines
        url, port = match.group(1), int(match.group(2))
        assert port != 6379
        assert url_file.read_text().strip() == url
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        with redis.Redis.from_url(url) as client:
            assert client.ping()

        # Flower answers, behind the basic auth that was passed by env, never on a command line.
        flower_url = up.line_with("Flower:").split("Flower:", 1)[1].strip()
        assert flower_url == f"http://127.0.0.1:{up_env['LIFEOS_FLOWER_PORT']}"
        assert _http_get(f"{flower_url}/", FLOWER_SECRET) == 200
        assert _http_get(f"{flower_url}/") == 401
        started = re.findall(r"([\w-]+) \(pid (\d+)\)", up.line_with("Started"))
        pids = {name: int(pid) for name, pid in started}
        assert set(pids) == {"worker-dumps", "worker", "beat", "flower", "dashboard"}

        # The dashboard answers at its URL with a login (and nothing else before one).
        dashboard = up.line_with("Dashboard:").split("Dashboard:", 1)[1].split()[0]
        assert dashboard == f"http://127.0.0.1:{up_env['LIFEOS_DASHBOARD_PORT']}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{dashboard}/", timeout=10) as page:  # redirected to the login
            assert page.url.endswith("/login?next=/") and b'id="login"' in page.read()
        marker = f"LIFEOS_BACKUP_ROOT={up_env['LIFEOS_BACKUP_ROOT']}"
        everyone = _processes_with_env(marker)
        assert set(pids.values()) <= set(everyone)
        assert not [c for c in _cmdlines(everyone) if "s3cret" in c]

        # Another terminal: the CLI finds the embedded Redis through the URL file.
        backup = subprocess.run(
            [CLI, "backup", "json", "--wait", "--timeout", "60"],
            env=up_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert backup.returncode == 0, backup.stderr
        assert re.fullmatch(r"json_backup_\d{8}_\d{6}", backup.stdout.strip().splitlines()[-1])

        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=40) == 0
        up.wait_for("stopped", timeout=30)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert up.proc.stderr is not None
    assert "Traceback" not in up.proc.stderr.read()
    assert not [pid for pid in pids.values() if _alive(pid)]
    assert _processes_with_env(marker) == []
    assert not url_file.exists()
    # The queue persists across restarts: Redis wrote its append-only file into the state dir.
    assert any((state / "redis").iterdir())


def test_up_refuses_a_public_dashboard_without_tls(tmp_path: Path) -> None:
    env = _env(tmp_path, LIFEOS_DASHBOARD_ADDRESS="0.0.0.0", LIFEOS_DASHBOARD_PORT="8808")
    result = subprocess.run(
        [CLI, "up"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing to serve the dashboard on '0.0.0.0' without TLS")
    assert "LIFEOS_DASHBOARD_BEHIND_TLS_PROXY" in lines[0]
    assert not (tmp_path / "root").exists()  # refused before starting or creating anything


def test_up_refuses_public_flower_without_basic_auth(tmp_path: Path) -> None:
    env = _env(tmp_path, LIFEOS_FLOWER_ADDRESS="0.0.0.0")
    result = subprocess.run(
        [CLI, "up"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing to start Flower on '0.0.0.0' without a password")
    assert "LIFEOS_FLOWER_BASIC_AUTH" in lines[0]
    assert not (tmp_path / "root").exists()  # refused before starting or creating anything
