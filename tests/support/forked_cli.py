"""Many `lifeos-backup` runs from one subprocess: the CLI is imported once, then each run is a
forked child process with its own argv, environment, working folder, stdout, stderr and exit
status, calling the console script's own entry function (`lifeos_backup_main`).

Why: importing the CLI takes about half a second, and walking every command with bad input is
over a hundred runs (tests/cli/test_command_tree.py); forked after the import, the walk takes
seconds instead of a minute on a two-core machine. A child differs from a fresh
`lifeos-backup` process only in having inherited the imports, and the imports read no setting.

Protocol: a JSON list of runs `{"args": [...], "cwd": str, "env": {...}}` on stdin; a JSON list
of `{"code": int, "stdout": str, "stderr": str}` on stdout, in the same order.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

TIMEOUT = 60.0  # seconds one run may take before it is killed (a command that hangs: a finding)


def _child(run: dict[str, Any], out_fd: int, err_fd: int) -> None:
    """The forked child: become the run's process, call the entry point, never return."""
    code = 1
    try:
        from lifeos_backup.cli import main as lifeos_backup_main

        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.chdir(run["cwd"])
        os.environ.clear()
        os.environ.update(run["env"])
        tempfile.tempdir = None  # found again from this run's TMPDIR
        sys.argv = ["lifeos-backup", *run["args"]]
        try:
            lifeos_backup_main()
            code = 0
        except SystemExit as exc:  # what the interpreter would do with it
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
    except BaseException:  # escaped the entry point: the interpreter prints it, exit 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.005)


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(run, out.fileno(), err.fileno())
        code = _wait(pid)
        out.seek(0)
        err.seek(0)
        return {
            "code": code,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def main() -> None:
    runs = json.load(sys.stdin)
    # The imports every child shares. The command tree loads the libraries a command uses only
    # when it runs (a fast `--help` and `list`): loaded here, the children share those too.
    import lifeos_backup.app.flags
    import lifeos_backup.cli.commands
    import lifeos_backup.core.settings
    import lifeos_backup.monitoring.status
    import lifeos_backup.storage.audit
    import lifeos_backup.wal.cli

    lifeos_backup.cli.commands.load()  # every group module: a run loads only its command's
    json.dump([run_one(run) for run in runs], sys.stdout)


if __name__ == "__main__":
    main()
