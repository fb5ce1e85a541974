"""Operations with real processes: the audit trail written by workers and the CLI, two
"hosts" (workers with their own backup roots) completing their chains, two Beats enqueueing each
tick once, and Flower showing a chain's tasks, over its API and in a headless browser.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from lifeos_backup.app.client import make_app, request_backup
from lifeos_backup.jobs.routes import CREATE, ROTATE, UPLOAD, VERIFY
from lifeos_backup.storage import audit
from tests.support.processes import BeatProcess, FlowerProcess
from tests.support.services import free_port
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
CHAIN = [CREATE, VERIFY, UPLOAD, ROTATE]
FLOWER_AUTH = "auditor:flower-Secret-42"


def cli(env: LifeosEnv, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env={**env.subprocess_env(), "USER": user},
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def records(env: LifeosEnv, action: str | None = None) -> list[dict[str, Any]]:
    return [audit.as_dict(r) for r in audit.records(env.catalog(), action=action)]


# ----------------------------------------------------------------------------- audit trail


def test_audit_records_every_action_with_its_initiator(
    lifeos_env: LifeosEnv, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    make_tree(lifeos_env.app_dir, files=12)
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("json", "audit", wait=True, timeout=60, app=app, initiator="app")
    backup_id = str(ref.backup_id)
    AsyncResult(ref.rotate_task_id, app=app).get(timeout=30)

    # The operator (USER=alice) verifies, restores (once refused, once done), drills, rotates.
    assert cli(lifeos_env, "verify", backup_id).returncode == 0
    target = tmp_path / "restored"
    assert cli(lifeos_env, "restore", "json", backup_id, "--target", str(target)).returncode == 0
    refused = cli(lifeos_env, "restore", "json", backup_id, "--target", str(target))
    assert refused.returncode == 1
    drill = cli(lifeos_env, "drill", "--kind", "json")
    assert drill.returncode == 0, drill.stderr
    assert cli(lifeos_env, "rotate", "--kind", "json").returncode == 0
    flag = cli(lifeos_env, "flags", "set", "use_postgresql_backend", "10%")
    assert flag.returncode == 0, flag.stderr
    # Beat's entries carry the initiator header (the real Beat is tested below).
    app.send_task(ROTATE, kwargs={"kind": "json"}, headers={"lifeos_initiator": "beat"}).get(
        timeout=30
    )
    # A verify that fails on the worker: recorded failed, initiator from the backup (the app).
    archive = lifeos_env.backup_root / lifeos_env.catalog().get(backup_id).path
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    # Where the flipped byte lands decides which check sees it first: the SHA-256, or zstd's own
    # (a corrupt frame); either way the verify fails.
    with pytest.raises(Exception, match=r"(?i)sha-?256|checksum|does not match|is corrupt"):
        app.send_task(VERIFY, args=[backup_id]).get(timeout=30)

    got = [(r["action"], r["initiator"], r["status"]) for r in records(lifeos_env)]
    assert got == [
        ("backup", "app", "succeeded"),
        ("verify", "app", "succeeded"),
        ("rotate", "app", "succeeded"),  # upload: a no-op without a bucket, not recorded
        ("verify", "alice", "succeeded"),
        ("restore.json", "alice", "succeeded"),
        ("restore.json", "alice", "failed"),
        ("drill", "alice", "succeeded"),
        ("rotate", "alice", "succeeded"),
        ("flag.set", "alice", "succeeded"),
        ("rotate", "beat", "succeeded"),
        ("verify", "app", "failed"),
    ], got
    by_action = {(r["action"], r["initiator"], r["status"]): r for r in records(lifeos_env)}
    created = by_action[("backup", "app", "succeeded")]
    assert created["target"] == backup_id and created["size"] > 0
    assert created["location"].endswith(str(archive)) and created["duration_s"] > 0
    restored = by_action[("restore.json", "alice", "succeeded")]
    assert restored["location"].endswith(str(target)) and restored["detail"]["files"] == 12
    assert "TargetNotEmpty" in by_action[("restore.json", "alice", "failed")]["detail"]["error"]
    assert by_action[("verify", "app", "failed")]["detail"]["error"]
    assert by_action[("drill", "alice", "succeeded")]["target"] == backup_id

    listed = cli(lifeos_env, "audit", "--action", "restore", "--since", "1h", "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["succeeded", "failed"]
    verified = cli(lifeos_env, "audit", "verify")
    assert verified.returncode == 0 and "11 records" in verified.stdout, verified.stderr


def _append_many(url: str, worker: int, count: int, go: Any) -> None:
    from lifeos_backup.storage.catalog.store import Catalog

    catalog = Catalog(url)
    go.wait(120)  # every process has its catalog: all start appending at the same moment
    for i in range(count):
        audit.append(catalog, action="flag.set", target=f"w{worker}-{i}", initiator=f"p{worker}")


def test_concurrent_appends_on_a_postgres_catalog_keep_one_chain(pg_url: str) -> None:
    """Several processes append at once: the advisory lock keeps one chain, no fork."""
    from lifeos_backup.storage.catalog.store import Catalog

    Catalog(pg_url)  # migrate once before the race
    context = multiprocessing.get_context("spawn")
    go = context.Barrier(4 + 1)  # released once all four are connected, however long that takes
    procs = [context.Process(target=_append_many, args=(pg_url, w, 40, go)) for w in range(4)]
    for proc in procs:
        proc.start()
    go.wait(120)
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    catalog = Catalog(pg_url)
    rows = audit.records(catalog)
    assert len(rows) == 160 and len({r.prev_hash for r in rows}) == 160
    result = audit.verify(catalog)
    assert result.ok, result.problems[:3]
    catalog.engine.dispose()


# ----------------------------------------------------------------------------- two hosts


def _host_env(root: Path, queue: str, **extra: str) -> dict[str, str]:
    return {"LIFEOS_BACKUP_ROOT": str(root), "LIFEOS_WORKER_HOST_QUEUE": queue, **extra}


def _where(env: LifeosEnv, backup_id: str, roots: dict[str, Path]) -> list[str]:
    path = env.catalog().get(backup_id).path
    return [name for name, root in roots.items() if (root / path).exists()]


def test_two_hosts_with_own_disks_both_complete_their_chains(
    lifeos_env: LifeosEnv, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Host a only dumps; host b dumps and runs maintenance and uploads. A chain created on a
    must come back to a (its host queue) for verify/upload/rotate, or verify finds no archive."""
    make_tree(lifeos_env.app_dir, files=5)
    lifeos_env.set(LIFEOS_CATALOG_URL=f"sqlite:///{tmp_path / 'shared-catalog.sqlite3'}")
    roots = {"a": tmp_path / "host-a", "b": tmp_path / "host-b"}
    start_worker(queues="dumps", **_host_env(roots["a"], "host.a"))
    start_worker(queues="dumps,maintenance,uploads", **_host_env(roots["b"], "host.b"))
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    seen: dict[str, list[str]] = {"a": [], "b": []}
    for attempt in range(16):
        ref = request_backup("json", f"run {attempt}", wait=True, timeout=60, app=app)
        AsyncResult(ref.rotate_task_id, app=app).get(timeout=30)  # the whole chain ended well
        [host] = _where(lifeos_env, str(ref.backup_id), roots)
        seen[host].append(str(ref.backup_id))
        if seen["a"] and seen["b"] and attempt >= 3:
            break
    assert seen["a"] and seen["b"], seen
    statuses = {b.id: b.status for b in lifeos_env.catalog().list(kind="json")}
    assert set(statuses.values()) == {"verified"}, statuses
    runs = lifeos_env.catalog().task_runs()
    hosts_of = {r.task_id: r.worker for r in runs}
    for backup_id in seen["a"]:  # every step of a's chains ran on a's worker
        steps = {r.task_name: hosts_of[r.task_id] for r in runs if r.backup_id == backup_id}
        assert len(set(steps.values())) == 1, steps


def test_without_host_queue_a_chain_created_elsewhere_fails_verify(
    lifeos_env: LifeosEnv, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The control: declared shared (LIFEOS_SHARED_REPOSITORY) while it is not, verify runs on
    the other host and cannot find the archive. This is what the host queue prevents."""
    make_tree(lifeos_env.app_dir, files=3)
    lifeos_env.set(LIFEOS_CATALOG_URL=f"sqlite:///{tmp_path / 'shared-catalog.sqlite3'}")
    shared = {"LIFEOS_SHARED_REPOSITORY": "true"}
    start_worker(queues="dumps", **_host_env(tmp_path / "host-a", "host.a", **shared))
    start_worker(queues="maintenance,uploads", **_host_env(tmp_path / "host-b", "host.b"))
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    with pytest.raises(Exception, match="verify failed"):
        request_backup("json", "control", wait=True, timeout=60, app=app)


# ----------------------------------------------------------------------------- two Beats


INTERVAL = 2.0  # seconds: LIFEOS_SCHEDULE_AUDIT_ROTATE below
SCHEDULE = {"LIFEOS_SCHEDULE_AUDIT_ROTATE": "@every 2s", "LIFEOS_BEAT_MAX_INTERVAL": "1"}
LOCK_TIMEOUT = 5 * 1.0  # RedBeat's lock: 5 x LIFEOS_BEAT_MAX_INTERVAL (workers/celery_app.py)
SENT = re.compile(rb"lifeos\.audit\.rotate sent\. id->([0-9a-f-]+)")


def within(ticks: int) -> float:
    """A generous wait for `ticks` ticks of the schedule: a Beat and a worker starting on a
    loaded machine, then five intervals per tick. Waits end as soon as what they wait for
    happens, so only a failing test waits this long."""
    return 30 + 5 * ticks * INTERVAL


def _sent(beat: BeatProcess) -> list[str]:
    """Ids of the audit rotations this Beat enqueued, in order (its DEBUG log says each one)."""
    return [m.decode() for m in SENT.findall(beat.log_path.read_bytes())]


def _runs(env: LifeosEnv) -> list[str]:
    """Task ids of the audit rotations the worker started, one entry per run."""
    return [r.task_id for r in env.catalog().task_runs() if r.task_name == "lifeos.audit.rotate"]


def _all_ran(env: LifeosEnv, ids: list[str]) -> bool:
    return set(ids) <= set(_runs(env))


@pytest.fixture
def beats(lifeos_env: LifeosEnv) -> Iterator[list[BeatProcess]]:
    started: list[BeatProcess] = []
    yield started
    for beat in started:
        beat.stop()


def test_two_beats_enqueue_each_tick_once_and_a_standby_takes_over(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    beats: list[BeatProcess],
    tmp_path: Path,
) -> None:
    """RedBeat's lock lets one of two Beats enqueue; the other waits and takes over when the
    first dies. Counted in events, not per second: the tasks each Beat says it sent, and the
    runs the worker recorded for those task ids."""
    lifeos_env.set(**SCHEDULE)
    start_worker(queues="maintenance")
    for name in ("beat-1", "beat-2"):
        beats.append(BeatProcess(lifeos_env.subprocess_env(), tmp_path / f"{name}.log"))
    holder = wait_until(
        lambda: next((b for b in beats if b"Acquired lock" in b.log_path.read_bytes()), None),
        within(1),
        "a Beat holding the RedBeat lock",
    )
    standby = next(b for b in beats if b is not holder)
    wait_until(lambda: len(_sent(holder)) >= 3, within(3), "three ticks enqueued by the holder")
    first = _sent(holder)
    wait_until(lambda: _all_ran(lifeos_env, first), within(1), "the worker running them")
    runs = _runs(lifeos_env)  # read before the logs: every run was sent before it is read
    assert b"Acquired lock" not in standby.log_path.read_bytes()
    assert _sent(standby) == []  # the standby enqueued nothing: each tick once
    assert set(runs) <= set(_sent(holder)) and len(runs) == len(set(runs)), runs

    holder.kill()  # crash: the lock expires (5 x 1 s) and the standby takes over
    standby.wait_for_log("Acquired lock", timeout=LOCK_TIMEOUT + within(1))
    taken_over = wait_until(lambda: _sent(standby), within(1), "the standby Beat enqueueing")
    wait_until(lambda: _all_ran(lifeos_env, taken_over), within(1), "the worker running them")
    log = standby.log_path.read_bytes()
    assert log.index(b"Acquired lock") < log.index(b"lifeos.audit.rotate sent")
    runs = _runs(lifeos_env)
    assert set(runs) <= set(_sent(holder)) | set(_sent(standby))
    assert len(runs) == len(set(runs)), runs  # no task enqueued once ran twice
    rotations = wait_until(lambda: records(lifeos_env, "audit.rotate"), within(1), "audit")
    assert {r["initiator"] for r in rotations} == {"beat"}


def test_two_plain_beats_would_enqueue_twice(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    beats: list[BeatProcess],
    tmp_path: Path,
) -> None:
    """The control for the test above: without RedBeat's lock both Beats enqueue every tick, so
    each tick runs twice. Counted in events: each Beat's own sent tasks, all of them run."""
    lifeos_env.set(**SCHEDULE)
    start_worker(queues="maintenance")
    for name in ("plain-1", "plain-2"):
        scheduler = ["-S", "celery.beat:PersistentScheduler", "-s", str(tmp_path / name)]
        beats.append(BeatProcess(lifeos_env.subprocess_env(), tmp_path / f"{name}.log", scheduler))
    both = wait_until(
        lambda: all(len(_sent(b)) >= 2 for b in beats) and [_sent(b) for b in beats],
        within(2),
        "both plain Beats enqueueing two ticks each",
    )
    sent = both[0] + both[1]
    wait_until(lambda: _all_ran(lifeos_env, sent), within(1), "the worker running all of them")


# ----------------------------------------------------------------------------- Flower


@pytest.fixture
def flower(lifeos_env: LifeosEnv, tmp_path: Path) -> Iterator[Callable[[], FlowerProcess]]:
    port, started = free_port(), []
    db = tmp_path / "flower.db"

    def start() -> FlowerProcess:
        log = tmp_path / f"flower-{len(started)}.log"
        proc = FlowerProcess(lifeos_env.subprocess_env(), log, port, db, FLOWER_AUTH)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


def _saved_files(db: Path) -> tuple[tuple[str, int, int], ...]:
    """Which files Flower's state is in now: (name, inode, mtime) of each. Every save writes new
    files and renames them into place (dbm may add a suffix), so each save changes this."""
    files = sorted(p for p in db.parent.glob(db.name + "*") if ".tmp" not in p.name)
    return tuple((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in files)


def _wait_for_a_save_after_now(db: Path) -> None:
    """Wait for two saves of Flower's state (--state_save_interval): the first may have begun
    before this call, the second began after the first ended, so it holds what Flower shows now.
    Saves run one after another, so this needs no assumption about how long one takes."""
    seen = _saved_files(db)
    for _ in range(2):
        seen = wait_until(
            lambda before=seen: (now := _saved_files(db)) != before and now,
            30,
            "Flower saving its state",
        )


def _chain_tasks(flower: FlowerProcess, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    tasks = flower.api("/api/tasks")
    found = {task_id: tasks[task_id] for task_id in ids if task_id in tasks}
    if len(found) == len(ids) and all(t.get("state") == "SUCCESS" for t in found.values()):
        return found
    return None


def test_flower_shows_the_chain_and_keeps_its_history(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    flower: Callable[[], FlowerProcess],
) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    first = flower()
    start_worker()
    assert first.request("/api/tasks")[0] == 401  # no password, no data
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("json", "flower", wait=True, timeout=60, app=app, initiator="app")
    ids = [ref.create_task_id, ref.verify_task_id, ref.upload_task_id, ref.rotate_task_id]
    shown = wait_until(lambda: _chain_tasks(first, ids), 30, "the chain in Flower")
    assert [shown[i]["name"] for i in ids] == CHAIN
    assert shown[ref.create_task_id]["kwargs"] == "{'reason': 'flower', 'initiator': 'app'}"
    assert [shown[i]["args"] for i in ids[1:]] == [f"('{ref.backup_id}',)"] * 3
    assert not [t for t in shown.values() if "password" in json.dumps(t).lower()]

    # A crash of Flower (SIGKILL) after its periodic save: the history survives the restart.
    _wait_for_a_save_after_now(first.db)
    first.kill()
    second = flower()
    kept = second.api("/api/tasks")
    assert {i: kept[i]["state"] for i in ids if i in kept} == dict.fromkeys(ids, "SUCCESS")


def _chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("chromium/chromedriver missing: run scripts/test.sh (apt-get install "
                    "chromium chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_browser_logs_into_flower_and_sees_the_chain(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    flower: Callable[[], FlowerProcess],
) -> None:
    import base64

    from selenium.webdriver.support.ui import WebDriverWait

    make_tree(lifeos_env.app_dir, files=3)
    proc = flower()
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("json", "browser", wait=True, timeout=60, app=app)
    ids = [ref.create_task_id, ref.verify_task_id, ref.upload_task_id, ref.rotate_task_id]
    wait_until(lambda: _chain_tasks(proc, ids), 30, "the chain in Flower")
    driver = _chrome()
    try:
        driver.get(proc.url + "/tasks")  # without credentials: refused
        assert "lifeos.backup.create" not in driver.page_source
        token = base64.b64encode(FLOWER_AUTH.encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )
        driver.get(proc.url + "/tasks")
        WebDriverWait(driver, 30).until(
            lambda d: all(name in d.page_source for name in CHAIN) and ids[0] in d.page_source
        )
        assert "Flower" in driver.title
    finally:
        driver.quit()
