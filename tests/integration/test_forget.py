"""`lifeos-backup forget`: through the CLI in a subprocess, locally and with a moto bucket.

Refusals (unknown id, the newest verified backup without --force), the dry run, local files and
remote objects removed together with one audit record each, and a forget killed between its
remote and local step finished by the next rotation, or the next off-site sync.
"""

from __future__ import annotations

import getpass
import json
import os
import signal

from lifeos_backup.formats.manifest import manifest_path
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.storage.offsite.upload import upload_backup
from tests.support.cli import assert_failure, assert_no_traceback, run_cli
from tests.support.s3 import Bucket
from tests.support.worker import LifeosEnv

# Kills the forget process the moment its remote step is done, before any local file goes.
KILL_AFTER_REMOTE = """
import os, signal
from lifeos_backup.jobs import deletion
def remove_local(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
deletion.remove_local = remove_local
"""


def good_backup(env: LifeosEnv, upload: bool = False) -> str:
    settings, catalog = env.settings(), env.catalog()
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    if upload:
        assert upload_backup(backup_id, settings, catalog) is not None
    return backup_id


def files_of(env: LifeosEnv, backup_id: str) -> list[bool]:
    archive = env.backup_root / env.catalog().get(backup_id).path
    return [archive.exists(), manifest_path(archive, backup_id).exists()]


def forget(env: LifeosEnv, *args: str, prelude: str | None = None):  # type: ignore[no-untyped-def]
    return run_cli(["forget", *args], env.root, env.subprocess_env(), prelude=prelude)


def remote_keys(bucket: Bucket, backup_id: str) -> list[str]:
    return [k for k in bucket.keys() if backup_id in k]  # noqa: SIM118 (a method)


def test_forget_refuses_then_deletes_with_audit(lifeos_env: LifeosEnv) -> None:
    older, newest = good_backup(lifeos_env), good_backup(lifeos_env)

    unknown = forget(lifeos_env, "json_backup_20200101_000000")
    assert_failure(unknown, "json_backup_20200101_000000")

    refused = forget(lifeos_env, older, newest)
    assert_failure(refused, newest, "newest verified backup of its kind (json)", "--force")
    assert files_of(lifeos_env, older) == [True, True]  # nothing went, not even the other one

    dry = forget(lifeos_env, older, "--dry-run")
    assert dry.code == 0, dry
    assert older in dry.stdout and "would delete" in dry.stdout
    assert files_of(lifeos_env, older) == [True, True]
    assert lifeos_env.catalog().get(older).status == "verified"

    done = forget(lifeos_env, older)
    assert done.code == 0, done
    assert_no_traceback(done)
    assert f"deleted {older} (local)" in done.stdout
    assert files_of(lifeos_env, older) == [False, False]
    assert lifeos_env.catalog().get(older).status == "deleted"
    assert_failure(forget(lifeos_env, older), older, "already deleted")

    forced = forget(lifeos_env, newest, "--force")
    assert forced.code == 0, forced
    assert lifeos_env.catalog().get(newest).status == "deleted"

    audit = run_cli(["audit", "--action", "forget", "--json"], lifeos_env.root,
                    lifeos_env.subprocess_env())  # fmt: skip
    records = json.loads(audit.stdout)
    assert sorted(r["target"] for r in records) == sorted([older, newest])
    user = os.environ.get("USER") or getpass.getuser()
    assert {r["initiator"] for r in records} == {user}
    assert {r["status"] for r in records} == {"succeeded"}


def test_forget_removes_remote_objects_and_a_killed_forget_is_finished(
    lifeos_env: LifeosEnv, s3_bucket: Bucket
) -> None:
    first, second, third, newest = (good_backup(lifeos_env, upload=True) for _ in range(4))
    assert remote_keys(s3_bucket, first) and remote_keys(s3_bucket, second)

    done = forget(lifeos_env, first)
    assert done.code == 0, done
    assert f"deleted {first} (both)" in done.stdout
    assert remote_keys(s3_bucket, first) == []
    assert files_of(lifeos_env, first) == [False, False]
    row = lifeos_env.catalog().get(first)
    assert (row.status, row.offsite_status) == ("deleted", "deleted")

    killed = forget(lifeos_env, second, prelude=KILL_AFTER_REMOTE)
    assert killed.code == -signal.SIGKILL, killed
    row = lifeos_env.catalog().get(second)
    assert row.status == "deleting"  # marked first: never taken for a good backup meanwhile
    assert remote_keys(s3_bucket, second) == []
    assert files_of(lifeos_env, second) == [True, True]  # the local step never ran
    shown = run_cli(["verify", second], lifeos_env.root, lifeos_env.subprocess_env())
    assert_failure(shown, second, "being deleted")

    rotation = run_cli(["rotate"], lifeos_env.root, lifeos_env.subprocess_env())
    assert rotation.code == 0, rotation
    assert files_of(lifeos_env, second) == [False, False]
    row = lifeos_env.catalog().get(second)
    assert (row.status, row.offsite_status) == ("deleted", "deleted")

    killed = forget(lifeos_env, third, prelude=KILL_AFTER_REMOTE)
    assert killed.code == -signal.SIGKILL, killed
    assert lifeos_env.catalog().get(third).status == "deleting"
    sync = run_cli(["offsite", "sync"], lifeos_env.root, lifeos_env.subprocess_env())
    assert sync.code == 0, sync
    assert files_of(lifeos_env, third) == [False, False]
    assert lifeos_env.catalog().get(third).status == "deleted"

    assert remote_keys(s3_bucket, newest)  # the rest untouched
    assert lifeos_env.catalog().get(newest).status == "verified"
