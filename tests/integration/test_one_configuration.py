"""One configuration for CLI, workers and the app: the repository is the anchor; the client
keeps its promise (BackupFailed for every failure, never a silent wait). Real processes:
`lifeos-backup up` on its embedded Redis, the CLI and the client in other processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeos_backup.app.client import BrokerUnavailable, NoWorker, make_app, request_backup
from tests.integration.test_up import CLI, RUNNING, UpProcess, _env, _processes_with_env
from tests.support.services import PostgresCluster, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def up_stack(tmp_path: Path) -> Iterator[tuple[UpProcess, dict[str, str]]]:
    """`up` on embedded defaults, started from its own folder with its own app dir."""
    env = _env(tmp_path)
    up = UpProcess(env, tmp_path)
    try:
        up.wait_for(RUNNING, timeout=90)
        yield up, env
    finally:
        if up.proc.poll() is None:
            up.proc.terminate()
            try:
                up.proc.wait(60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
        for pid in _processes_with_env(f"LIFEOS_BACKUP_ROOT={env['LIFEOS_BACKUP_ROOT']}"):
            os.kill(pid, 9)


def _bare_env(**extra: str) -> dict[str, str]:
    """An operator's other shell: no LIFEOS_* settings at all, unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEOS_")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def test_another_shell_with_only_the_repository_backs_up_what_the_workers_see(
    up_stack: tuple[UpProcess, dict[str, str]], tmp_path: Path
) -> None:
    _up, env = up_stack
    root = env["LIFEOS_BACKUP_ROOT"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The app dir is only in up's environment; this shell names the repository alone.
    done = _run([CLI, "backup", "json", "--wait"], _bare_env(LIFEOS_BACKUP_ROOT=root), elsewhere)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"json_backup_\d{8}_\d{6}", done.stdout.split()[-1])
    # ... or `--repo`, like restic's -r
    listed = _run([CLI, "--repo", root, "list", "--json"], _bare_env(), elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in json.loads(listed.stdout)] == ["verified"]
    assert not (elsewhere / "backups").exists()
    recorded = json.loads((Path(root) / ".state" / "settings.json").read_text())
    assert recorded["settings"]["app_dir"] == env["LIFEOS_APP_DIR"]
    assert (Path(root) / ".state" / "settings.json").stat().st_mode & 0o777 == 0o600

    # A shell whose own app dir differs is told, in one line, that the workers use theirs.
    other_app = tmp_path / "other-app"
    (other_app / "data").mkdir(parents=True)
    shell = _bare_env(LIFEOS_BACKUP_ROOT=root, LIFEOS_APP_DIR=str(other_app))
    told = _run([CLI, "backup", "json", "--wait"], shell, elsewhere)
    assert told.returncode == 0, told.stderr
    [warning] = [line for line in told.stderr.splitlines() if line.startswith("warning:")]
    assert str(other_app) in warning and env["LIFEOS_APP_DIR"] in warning


def test_the_app_client_finds_the_embedded_redis_through_the_repository(
    up_stack: tuple[UpProcess, dict[str, str]], tmp_path: Path
) -> None:
    _up, env = up_stack
    code = (
        "from lifeos_backup.app.client import request_backup\n"
        "print(request_backup('json', 'from the app', wait=True, timeout=120).backup_id)\n"
    )
    app = _run(
        [sys.executable, "-c", code],
        _bare_env(LIFEOS_BACKUP_ROOT=env["LIFEOS_BACKUP_ROOT"]),
        tmp_path,
    )
    assert app.returncode == 0, app.stderr
    assert app.stdout.strip().startswith("json_backup_")


def test_a_backup_requested_without_wait_can_be_followed(
    up_stack: tuple[UpProcess, dict[str, str]], tmp_path: Path
) -> None:
    _up, env = up_stack
    queued = _run([CLI, "backup", "json"], env, tmp_path)
    assert queued.returncode == 0, queued.stderr
    task_id = queued.stdout.strip()
    assert f"lifeos-backup follow {task_id}" in queued.stderr
    followed = _run([CLI, "follow", task_id], env, tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.strip().startswith("json_backup_")
    bad = _run([CLI, "follow", "not-a-task"], env, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_embedded_redis_keeps_its_port_across_restarts(tmp_path: Path) -> None:
    env = _env(tmp_path)
    ports = []
    for _ in range(2):
        up = UpProcess(env, tmp_path)
        try:
            line = up.wait_for("embedded at", timeout=60)
            ports.append(int(re.search(r":(\d+)/0", line).group(1)))
            up.wait_for(RUNNING, timeout=90)
        finally:
            up.proc.terminate()
            up.proc.wait(60)
    assert ports[0] == ports[1]


def test_the_client_raises_backup_failed_when_redis_is_unreachable_or_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIFEOS_REDIS_URL", raising=False)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path / "no-repository"))
    with pytest.raises(BrokerUnavailable, match="no Redis"):
        request_backup("json", wait=True, timeout=60)
    closed = f"redis://127.0.0.1:{free_port()}/0"
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="Redis does not answer"):
        request_backup("json", wait=True, timeout=600, app=make_app(closed))
    assert time.monotonic() - began < 15  # three reconnects about 1 s apart, not 20


def test_no_worker_on_the_queue_is_said_at_once_not_after_the_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    phases = []
    began = time.monotonic()
    with pytest.raises(NoWorker, match="no worker is consuming queue dumps"):
        request_backup(
            "json", wait=True, timeout=900, app=make_app(redis_url), on_progress=phases.append
        )
    assert time.monotonic() - began < 300  # not the 900 s timeout
    assert phases[0] == {"phase": "queued"}
    cli = _run(
        [CLI, "backup", "json", "--wait"],
        _bare_env(LIFEOS_REDIS_URL=redis_url, LIFEOS_BACKUP_ROOT=str(tmp_path / "b")),
        tmp_path,
    )
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines()[-1].startswith("error: no worker is consuming")


def test_a_request_for_a_down_database_is_one_failed_row_with_its_attempts(
    lifeos_env, start_worker
) -> None:
    lifeos_env.set(LIFEOS_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/gone")
    start_worker(LIFEOS_RETRY_MAX="2")
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    with pytest.raises(Exception, match="unreachable"):
        request_backup("postgres", "database down", wait=True, timeout=120, app=app)
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == "failed"
    assert "attempt 3:" in (row.error or "") and "earlier attempt 2:" in (row.error or "")


def test_restore_postgres_never_falls_back_to_the_local_socket(
    lifeos_env, pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    from lifeos_backup.jobs.backups import create_backup, verify_backup
    from tests.support.services import temporary_database

    with temporary_database(pg_cluster) as source:
        lifeos_env.set(LIFEOS_DATABASE_URL=source.url)
        made = create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
        verify_backup(made.backup_id, lifeos_env.settings(), lifeos_env.catalog())
    name = f"restored_{os.getpid()}"
    env = lifeos_env.subprocess_env()
    for name in ("LIFEOS_DATABASE_URL", "PGHOST", "PGSERVICE"):
        env.pop(name, None)
    refused = _run(
        [CLI, "restore", "postgres", made.backup_id, "--database", name, "--create"], env, tmp_path
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and "--server" in refused.stderr
    assert not pg_cluster.database_exists(name)
    server = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}"
    done = _run(
        [CLI, "restore", "postgres", made.backup_id, "--database", name, "--create",
         "--server", server],
        env, tmp_path,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        assert pg_cluster.database_exists(name)
    finally:
        pg_cluster.drop_database(name)
