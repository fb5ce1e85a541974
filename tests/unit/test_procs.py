"""procs runs real children: these tests use real processes (bash, head, python) and stay fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lifeos_backup.core import procs
from lifeos_backup.core.errors import CommandFailed, CommandTimeout, ConfigError

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55word"
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and PR_SET_PDEATHSIG")


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as dead (it may be waiting for a slow init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for(predicate, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _read_pid(path: Path) -> int:
    assert _wait_for(lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text())


def test_run_captures_stdout_and_stderr() -> None:
    done = procs.run(["bash", "-c", "echo out; echo err >&2"], capture_stdout=True)
    assert done.returncode == 0
    assert done.stdout == b"out\n"
    assert done.stderr == "err\n"
    assert done.args == ["bash", "-c", "echo out; echo err >&2"]


def test_run_writes_to_given_stdout_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with target.open("wb") as handle:
        done = procs.run(["echo", "hello"], stdout=handle)
    assert done.stdout is None
    assert target.read_bytes() == b"hello\n"


def test_nonzero_exit_raises_with_stderr_and_command() -> None:
    with pytest.raises(CommandFailed) as caught:
        procs.run(["bash", "-c", "echo first >&2; echo 'no such table' >&2; exit 3"])
    text = str(caught.value)
    assert caught.value.what == "bash failed (exit 3)"
    assert "no such table" in caught.value.detail
    assert "exit 3" in text


def test_ok_codes_accept_other_exit_codes() -> None:
    done = procs.run(["bash", "-c", "exit 1"], ok_codes={0, 1})
    assert done.returncode == 1


def test_detail_keeps_only_the_last_lines() -> None:
    with pytest.raises(CommandFailed) as caught:
        procs.run(["bash", "-c", "for i in $(seq 1 100); do echo line$i >&2; done; exit 1"])
    assert "line100" in caught.value.detail
    assert "line80\n" not in caught.value.detail
    assert "line81" in caught.value.detail


def test_env_secret_reaches_child_but_not_the_exception(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = f'echo "$PGPASSWORD" > {seen}; echo "auth failed for $PGPASSWORD" >&2; exit 2'
    with pytest.raises(CommandFailed) as caught:
        procs.run(["bash", "-c", script], env={"PGPASSWORD": SECRET})
    assert seen.read_text().strip() == SECRET
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.args)
    assert "auth failed for ***" in caught.value.detail


def test_env_is_merged_over_the_environment() -> None:
    done = procs.run(["bash", "-c", 'echo "$PATH|$EXTRA"'], env={"EXTRA": "x"}, capture_stdout=True)
    assert done.stdout == f"{os.environ['PATH']}|x\n".encode()


@linux_only
def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        procs.run(["bash", "-c", f"sleep 100 & echo $! > {pidfile}; wait"], timeout=0.5)
    # The 0.5 s timeout, not the 100 s sleep; loose, so that a loaded host cannot break it.
    assert time.monotonic() - started < 30
    assert caught.value.what == "bash timed out after 0.5s"
    grandchild = _read_pid(pidfile)
    assert _wait_for(lambda: not _alive(grandchild), within=30)


def test_timeout_while_caller_is_blocked_reading_stdout() -> None:
    with pytest.raises(CommandTimeout), procs.spawn(["sleep", "100"], timeout=0.5) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read() == b""  # returns only because the watchdog killed the child
    assert proc.returncode == -signal.SIGTERM


@linux_only
def test_exception_inside_spawn_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with (
        pytest.raises(RuntimeError, match="consumer broke"),
        procs.spawn(["bash", "-c", f"sleep 100 & echo $! > {pidfile}; wait"]) as proc,
    ):
        grandchild = _read_pid(pidfile)
        raise RuntimeError("consumer broke")
    assert proc.returncode is not None
    assert _wait_for(lambda: not _alive(grandchild), within=30)


def test_chatty_stderr_does_not_deadlock() -> None:
    chatty = "import sys; sys.stderr.write('x' * 2_000_000 + '\\nlast words\\n'); sys.exit(4)"
    with pytest.raises(CommandFailed) as caught:
        procs.run([sys.executable, "-c", chatty], timeout=10)
    assert caught.value.detail.endswith("last words")
    done = procs.run([sys.executable, "-c", chatty], timeout=10, ok_codes={4})
    assert len(done.stderr) <= procs.STDERR_KEEP
    assert done.stderr.endswith("last words\n")


def test_spawn_streams_stdout_in_chunks() -> None:
    total = chunks = 0
    with procs.spawn(["head", "-c", "5000000", "/dev/zero"], timeout=10) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(65536):
            total += len(chunk)
            chunks += 1
    assert total == 5_000_000
    assert chunks > 1
    assert proc.returncode == 0


def test_spawn_feeds_stdin_and_closes_it(tmp_path: Path) -> None:
    target = tmp_path / "count"
    with (
        target.open("wb") as handle,
        procs.spawn(["wc", "-c"], stdin=subprocess.PIPE, stdout=handle, timeout=10) as proc,
    ):
        assert proc.stdin is not None
        for _ in range(100):
            proc.stdin.write(b"a" * 10_000)
    assert target.read_text().strip() == "1000000"


def test_spawn_raises_command_failed_after_the_block() -> None:
    with (
        pytest.raises(CommandFailed, match="exit 5"),
        procs.spawn(["bash", "-c", "echo partial; echo broken >&2; exit 5"]) as proc,
    ):
        assert proc.stdout is not None
        assert proc.stdout.read() == b"partial\n"


def test_missing_program_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no-such-program-xyz not found"):
        procs.run(["no-such-program-xyz"])
    with pytest.raises(ConfigError, match="not on PATH"):
        procs.which("no-such-program-xyz")
    assert procs.which("sh").endswith("/sh")


@linux_only
def test_child_dies_when_parent_is_sigkilled(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    parent_code = textwrap.dedent(
        f"""
        from lifeos_backup.core import procs
        procs.run(["bash", "-c", "echo $$ > {pidfile}; exec sleep 100"])
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        sleeper = _read_pid(pidfile)
        assert _wait_for(lambda: Path(f"/proc/{sleeper}/comm").read_text().strip() == "sleep")
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert _wait_for(lambda: not _alive(sleeper), within=30)
    finally:
        parent.kill()
        parent.wait()
