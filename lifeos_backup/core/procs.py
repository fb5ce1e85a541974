"""The one way external commands (pg_dump, psql, tar, zstd...) are run.

Why not plain subprocess: a backup worker is killed from outside (Celery soft and hard time
limits), its children are chatty, and their environment carries passwords. So every child here:

- gets an argument list, never a shell string;
- gets secrets only through `env`, and every value of `env` is redacted from error messages;
- runs in its own session, so a timeout or an exception kills its whole process group;
- on Linux dies with us (PR_SET_PDEATHSIG) even if we are SIGKILLed;
- has its stderr drained by a thread into a bounded buffer, so it can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from lifeos_backup.core.errors import CommandFailed, CommandTimeout, ConfigError

log = logging.getLogger(__name__)

STDERR_KEEP = 64 * 1024  # bytes of stderr kept per child: its last words are what explain a failure
DETAIL_LINES = 20  # lines of that tail put into an exception
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a process group
STDERR_WAIT = 5.0  # seconds to wait for stderr EOF once the child is gone (a leftover may hold it)
MIN_SECRET_LEN = 4  # shorter env values are not redacted: they cannot be secrets, only noise
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


@dataclass
class Finished:
    """What `run` saw: the exit code, the (redacted) stderr tail and, if captured, stdout."""

    args: list[str]
    returncode: int
    stderr: str
    stdout: bytes | None


class Process:
    """A running child: its pipes, its exit code and the tail of its stderr."""

    def __init__(self, popen: subprocess.Popen[bytes], secrets: Collection[str]) -> None:
        self.popen = popen
        self.stdin = popen.stdin
        self.stdout = popen.stdout
        self._secrets = secrets
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._drainer = threading.Thread(
            target=self._drain, name=f"stderr-{popen.pid}", daemon=True
        )
        self._drainer.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def stderr_tail(self) -> str:
        """The last STDERR_KEEP bytes of stderr, decoded, with the `env` secrets redacted."""
        with self._lock:
            text = self._tail.decode(errors="replace")
        return _redact(text, self._secrets)

    def _drain(self) -> None:
        stream = self.popen.stderr
        assert stream is not None
        with stream:
            while chunk := os.read(stream.fileno(), 65536):
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-STDERR_KEEP]

    def _close_pipes(self) -> None:
        """Close the pipes spawn opened; closing stdin is what tells the child its input ended."""
        for pipe in (self.stdin, self.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # BrokenPipeError: the child stopped reading
                    pipe.close()

    def _join_stderr(self) -> None:
        self._drainer.join(STDERR_WAIT)


def which(program: str) -> str:
    """Full path of `program`; checked up front so a missing tool is a config error, not a crash."""
    path = shutil.which(program)
    if path is None:
        raise _not_found(program)
    return path


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    capture_stdout: bool = False,
    ok_codes: Collection[int] = (0,),
) -> Finished:
    """Run a command to completion; raise CommandFailed / CommandTimeout, else say what it did.

    `stdin` / `stdout` are files or fds to connect (e.g. a dump file); `capture_stdout` collects
    stdout in memory instead, for small outputs only.
    """
    if capture_stdout and stdout is not None:
        raise ValueError("give either stdout or capture_stdout, not both")
    with spawn(
        args,
        env=env,
        timeout=timeout,
        cwd=cwd,
        stdin=stdin,
        stdout=subprocess.PIPE if capture_stdout else stdout,
        ok_codes=ok_codes,
    ) as proc:
        out = proc.stdout.read() if proc.stdout is not None else None
    assert proc.returncode is not None
    return Finished(list(args), proc.returncode, proc.stderr_tail(), out)


@contextlib.contextmanager
def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    ok_codes: Collection[int] = (0,),
) -> Iterator[Process]:
    """Start a command for streaming: read `proc.stdout` / write `proc.stdin` inside the block.

    Read stdout to EOF: leaving the block closes the pipes spawn opened, so a child still writing
    gets SIGPIPE and fails. Then the child is waited for and CommandFailed / CommandTimeout raised.
    `timeout` covers the whole block and is enforced by a watchdog thread, because the caller may be
    blocked reading. An exception in the block kills the process group and is re-raised (as
    CommandTimeout if the watchdog had fired, since the kill is then what caused it).

    PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so call this from a
    thread that outlives the command (Celery runs tasks in the main thread).
    """
    argv = list(args)
    secrets = [value for value in (env or {}).values() if len(value) >= MIN_SECRET_LEN]
    log.debug("running %s", argv)
    try:
        popen = subprocess.Popen(
            argv,
            env={**os.environ, **env} if env else None,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),
        )
    except FileNotFoundError as exc:
        if exc.filename != argv[0]:  # e.g. a missing cwd
            raise
        raise _not_found(argv[0]) from None
    proc = Process(popen, secrets)
    expired = threading.Event()
    watchdog = _start_watchdog(popen, timeout, expired)
    try:
        yield proc
        proc._close_pipes()
        popen.wait()
    except BaseException as exc:
        _kill_group(popen)
        proc._close_pipes()
        proc._join_stderr()
        if expired.is_set() and isinstance(exc, Exception):
            raise _timeout_error(argv, timeout, proc) from exc
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
            watchdog.join()  # if it fired, let it finish killing the group
    proc._join_stderr()
    if expired.is_set():
        raise _timeout_error(argv, timeout, proc)
    if popen.returncode not in ok_codes:
        raise CommandFailed(
            f"{_program(argv)} failed ({_exit_text(popen.returncode)})",
            _detail(argv, proc),
            "the command's own message is above; fix its cause and run the job again",
        )


def die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when we die, even by SIGKILL."""
    if _prctl is None:
        return None
    prctl = _prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # we died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def set_parent_death_signal() -> None:
    """This process (a worker's pool process) is SIGKILLed when its parent dies (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_watchdog(
    popen: subprocess.Popen[bytes], timeout: float | None, expired: threading.Event
) -> threading.Timer | None:
    if timeout is None:
        return None

    def expire() -> None:
        if popen.returncode is None:
            expired.set()
            _kill_group(popen)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return timer


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after KILL_GRACE, reap the child."""
    # The group id is the child's pid (start_new_session). PermissionError: macOS refuses to
    # signal a group whose members are all zombies.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(KILL_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


def _timeout_error(argv: list[str], timeout: float | None, proc: Process) -> CommandTimeout:
    return CommandTimeout(
        f"{_program(argv)} timed out after {timeout:g}s",
        _detail(argv, proc),
        "its process group was killed; check what it waits for (locks, network) or raise the limit",
    )


def _not_found(program: str) -> ConfigError:
    return ConfigError(
        f"{program} not found",
        "it is not on PATH",
        "install it (e.g. apt-get install postgresql-client)",
    )


def _program(argv: list[str]) -> str:
    return os.path.basename(argv[0])


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def _detail(argv: list[str], proc: Process) -> str:
    """The command line and the last lines of its stderr, secrets redacted."""
    lines = proc.stderr_tail().strip().splitlines()[-DETAIL_LINES:]
    said = "\n".join(lines) if lines else "(no stderr output)"
    return _redact(f"{shlex.join(argv)}: {said}", proc._secrets)


def _redact(text: str, secrets: Collection[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def pid_alive(pid: int) -> bool:
    """Whether a process exists (of any user): tells abandoned work folders from busy ones."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
