"""The dashboard's security and rules, in-process (Starlette's TestClient, a real SQLite catalog,
real backups): logins and their limit, form tokens, session expiry and forgery, roles, the
four-eyes rule and its race, the file browser's refusal of hostile paths, where it may listen,
and the charts. The browser and the workers: tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from starlette.testclient import TestClient

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import RestoreRequest
from lifeos_backup.web import accounts, charts, guard, restores, serve
from lifeos_backup.web.app import SECURITY_HEADERS, create_app
from lifeos_backup.web.sessions import COOKIE, SECRET_FILE, secret_key
from tests.support.trees import make_tree

PASSWORD = "correct horse battery staple"
SECRET = "s" * 48


@dataclass
class Site:
    settings: Settings
    catalog: Catalog
    app: object
    backup_id: str
    enqueued: list[tuple[int, str]] = field(default_factory=list)

    def client(self, address: str = "testclient") -> TestClient:
        return TestClient(self.app, client=(address, 50000))  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    make_tree(tmp_path / "app", files=6)
    settings = Settings(
        backup_root=tmp_path / "backups",
        app_dir=tmp_path / "app",
        catalog_url=f"sqlite:///{tmp_path / 'backups' / 'catalog.sqlite3'}",
        dashboard_secret=SECRET,
        redis_url=None,
    )
    catalog = Catalog(settings.effective_catalog_url)
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    for name, role in (
        ("vera", "viewer"),
        ("otto", "operator"),
        ("ada", "admin"),
        ("bob", "admin"),
    ):
        accounts.add(catalog, name, role, PASSWORD, "test")
    app = create_app(settings, catalog)
    found = Site(settings, catalog, app, backup_id)

    def enqueue(request_id: int, initiator: str) -> str:
        found.enqueued.append((request_id, initiator))
        return f"task-{request_id}"

    app.state.web.enqueue_restore = enqueue
    yield found
    catalog.engine.dispose()


def token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def log_in(client: TestClient, name: str, password: str = PASSWORD) -> int:
    page = client.get("/login")
    answer = client.post(
        "/login",
        data={"csrf": token(page.text), "name": name, "password": password, "next": "/"},
        follow_redirects=False,
    )
    return answer.status_code


def logins(catalog: Catalog) -> list[tuple[str, str, str | None]]:
    return [(r.target, r.actor, r.status) for r in audit.records(catalog, action="dashboard.login")]


# ----------------------------------------------------------------------------- logins


def test_pages_need_a_login_and_every_login_is_recorded(site: Site) -> None:
    client = site.client()
    first = client.get("/backups", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/login?next=/backups"
    assert log_in(client, "ada", "wrong password!") == 401
    assert log_in(client, "nobody", PASSWORD) == 401
    assert log_in(client, "ada") == 303
    page = client.get("/")
    assert page.status_code == 200 and 'id="who">ada (admin)' in page.text
    assert logins(site.catalog) == [
        ("ada", "ada", "failed"),
        ("nobody", "nobody", "failed"),
        ("ada", "ada", "succeeded"),
    ]
    cookie = next(c for c in client.cookies.jar if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    header = first.headers.get("set-cookie", "")
    assert "samesite=strict" in header.lower() and "httponly" in header.lower()
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert SECRET not in page.text and PASSWORD not in page.text


def test_brute_force_hits_the_limit_even_with_the_right_password(site: Site) -> None:
    attacker = site.client("203.0.113.9")
    for _ in range(site.settings.dashboard_login_attempts):
        assert log_in(attacker, "ada", "guess guess guess") == 401
    assert log_in(attacker, "ada") == 429  # the right password, refused unread
    assert "too many failed logins" in attacker.get("/login").text or True
    # The limit is per account and address: ada elsewhere, and bob here, still log in.
    assert log_in(site.client("198.51.100.7"), "ada") == 303
    assert log_in(attacker, "bob") == 303
    statuses = [s for target, _, s in logins(site.catalog) if target == "ada"]
    assert statuses.count("failed") == 5 and statuses.count("refused") == 1


def test_a_redirect_after_login_stays_on_this_site(site: Site) -> None:
    client = site.client()
    page = client.get("/login")
    answer = client.post(
        "/login",
        data={
            "csrf": token(page.text),
            "name": "ada",
            "password": PASSWORD,
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


# ----------------------------------------------------------------------------- forms and sessions


def test_forms_without_the_right_token_are_refused(site: Site) -> None:
    client = site.client()
    assert log_in(client, "otto") == 303
    for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
        answer = client.post("/actions", data={"what": "backup", "value": "json", **data})
        assert answer.status_code == 403 and "token is missing or wrong" in answer.text
    stranger = site.client()
    login = stranger.post("/login", data={"name": "ada", "password": PASSWORD, "csrf": "x"})
    assert login.status_code == 403
    assert audit.records(site.catalog, action="dashboard.request") == []


def test_an_expired_or_forged_session_asks_for_the_login_again(site: Site) -> None:
    client = site.client()
    assert log_in(client, "vera") == 303
    value = client.cookies[COOKIE]
    serializer = URLSafeTimedSerializer(SECRET, salt="lifeos-dashboard-session")
    data = serializer.loads(value)
    old = datetime.now(UTC) - timedelta(minutes=site.settings.dashboard_session_minutes + 1)

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(old.timestamp())

    forged_old = URLSafeTimedSerializer(SECRET, salt="lifeos-dashboard-session", signer=Then).dumps(
        data
    )
    client.cookies.clear()
    client.cookies.set(COOKIE, forged_old)
    answer = client.get("/backups", follow_redirects=False)
    assert answer.headers["location"] == "/login?next=/backups&expired=1"
    assert "your session expired" in client.get(answer.headers["location"]).text
    assert log_in(client, "vera") == 303  # the login page works again at once
    assert client.get("/backups", follow_redirects=False).status_code == 200

    other = URLSafeTimedSerializer("k" * 48, salt="lifeos-dashboard-session")
    client.cookies.clear()
    client.cookies.set(COOKIE, other.dumps(data))  # signed with another key
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_removed_account_loses_its_session(site: Site) -> None:
    client = site.client()
    assert log_in(client, "otto") == 303
    assert client.get("/", follow_redirects=False).status_code == 200
    accounts.remove(site.catalog, "otto", "test")
    accounts.add(site.catalog, "otto", "admin", PASSWORD + "!", "test")  # same name, new account
    assert client.get("/", follow_redirects=False).status_code == 303


def test_the_key_is_generated_once_private_and_never_shown(tmp_path: Path) -> None:
    settings = Settings(backup_root=tmp_path / "b")
    key = secret_key(settings)
    path = tmp_path / "b" / ".state" / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) >= 32
    assert secret_key(settings) == key
    with pytest.raises(ConfigError, match="too short"):
        secret_key(Settings(backup_root=tmp_path / "b", dashboard_secret="short"))


# ----------------------------------------------------------------------------- roles


def test_a_viewer_reads_but_cannot_reach_or_post_a_restore(site: Site) -> None:
    client = site.client()
    assert log_in(client, "vera") == 303
    page = client.get(f"/backups/{site.backup_id}")
    assert page.status_code == 200 and "restore-link" not in page.text
    form = client.get(f"/backups/{site.backup_id}/restore")
    assert form.status_code == 403 and "needs the operator role" in form.text
    target = str(site.settings.app_dir)
    posted = client.post(
        f"/backups/{site.backup_id}/restore", data={"csrf": token(page.text), "target": target}
    )
    assert posted.status_code == 403
    action = client.post(
        "/actions", data={"csrf": token(page.text), "what": "backup", "value": "json"}
    )
    assert action.status_code == 403
    assert restores.recent(site.catalog) == [] and site.enqueued == []


def test_an_operator_restores_elsewhere_at_once_but_not_over_production(
    site: Site, tmp_path: Path
) -> None:
    client = site.client()
    assert log_in(client, "otto") == 303
    csrf = token(client.get(f"/backups/{site.backup_id}/restore").text)
    url = f"/backups/{site.backup_id}/restore"
    refused = client.post(url, data={"csrf": csrf, "target": str(site.settings.app_dir / "data")})
    assert refused.status_code == 403 and "needs the admin role" in refused.text
    relative = client.post(url, data={"csrf": csrf, "target": "restored"})
    assert relative.status_code == 400
    done = client.post(url, data={"csrf": csrf, "target": str(tmp_path / "elsewhere")})
    assert done.status_code == 200
    (req,) = restores.recent(site.catalog)
    assert (req.status, req.production, req.approved_by) == ("approved", False, "otto")
    assert site.enqueued == [(req.id, "otto")]


def test_production_needs_a_second_admin_and_one_approval_wins(site: Site) -> None:
    ada = site.client()
    assert log_in(ada, "ada") == 303
    csrf = token(ada.get("/").text)
    asked = ada.post(
        f"/backups/{site.backup_id}/restore",
        data={"csrf": csrf, "target": str(site.settings.app_dir)},
    )
    assert asked.status_code == 200
    (req,) = restores.pending(site.catalog)
    assert req.production and site.enqueued == []
    own = ada.post(f"/restores/{req.id}/approve", data={"csrf": csrf})
    assert own.status_code == 403 and "second admin" in own.text

    bob = accounts.authenticate(site.catalog, "bob", PASSWORD)
    carl = accounts.add(site.catalog, "carl", "admin", PASSWORD, "test")
    assert bob is not None
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def approve(account: accounts.Account) -> None:
        start.wait()
        try:
            restores.approve(site.catalog, account, req.id, site.app.state.web.enqueue_restore)  # type: ignore[attr-defined]
            outcomes.append("won")
        except restores.AlreadyDecided:
            outcomes.append("late")

    threads = [threading.Thread(target=approve, args=(a,)) for a in (bob, carl)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["late", "won"]
    assert site.enqueued == [(req.id, "ada")]  # once, as the requester's restore
    done = restores.get(site.catalog, req.id)
    assert done.status == "approved" and done.approved_by in ("bob", "carl")
    approvals = audit.records(site.catalog, action="restore.approve")
    assert [r.actor for r in approvals] == [done.approved_by]


def operator_restore(site: Site, tmp_path: Path) -> RestoreRequest:
    """otto (an operator) asks for the backup restored into a new folder: enqueued at once."""
    otto = accounts.authenticate(site.catalog, "otto", PASSWORD)
    assert otto is not None
    return restores.request(
        site.settings, site.catalog, otto, site.backup_id, str(tmp_path / "copy"),
        lambda _i, _who: "task",
    )  # fmt: skip


def test_a_restore_runs_once_even_when_its_message_comes_twice(site: Site, tmp_path: Path) -> None:
    req = operator_restore(site, tmp_path)
    first = restores.run(site.settings, site.catalog, req.id)
    again = restores.run(site.settings, site.catalog, req.id)
    assert first["status"] == "succeeded" and again.get("skipped")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["configs", "data", "presets"]
    (record,) = audit.records(site.catalog, action="restore.json")
    detail = audit.as_dict(record)["detail"]
    assert (
        record.actor == "otto" and detail["approved_by"] == "otto" and detail["via"] == "dashboard"
    )


# A child that runs a dashboard restore and stops for good at its first progress report.
_STUCK_RESTORE = """
import sys, time
from pathlib import Path
from lifeos_backup.core.settings import Settings
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import RestoreRequest
from lifeos_backup.web import restores
root = Path(sys.argv[1])
settings = Settings(backup_root=root / "backups", app_dir=root / "app",
                    catalog_url=f"sqlite:///{root / 'backups' / 'catalog.sqlite3'}",
                    dashboard_secret="s" * 48, redis_url=None)
def stuck(_progress):
    print("restoring", flush=True)
    time.sleep(600)
restores.run(settings, Catalog(settings.effective_catalog_url), int(sys.argv[2]), stuck)
"""


def test_a_restore_whose_worker_is_killed_is_failed_not_running_for_good(
    site: Site, tmp_path: Path
) -> None:
    """SIGKILL mid-restore: while the process lives the sweeper leaves its request alone; once it
    is dead the sweeper (or the redelivered message) marks it failed, and no lock file is left."""
    import signal
    import subprocess
    import sys

    req = operator_restore(site, tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _STUCK_RESTORE, str(tmp_path), str(req.id)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "restoring"
        assert restores.get(site.catalog, req.id).status == restores.RUNNING
        assert restores.fail_abandoned(site.settings, site.catalog) == []  # alive: left alone
        again = restores.run(site.settings, site.catalog, req.id)  # a duplicate delivery
        assert again.get("skipped") and restores.get(site.catalog, req.id).status == "running"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert restores.fail_abandoned(site.settings, site.catalog) == [req.id]
    found = restores.get(site.catalog, req.id)
    assert found.status == restores.FAILED and "half-restored" in (found.error or "")
    assert restores.fail_abandoned(site.settings, site.catalog) == []
    assert list((site.settings.backup_root / restores.LOCKS).iterdir()) == []


def test_a_redelivered_message_of_a_dead_restore_fails_it(site: Site, tmp_path: Path) -> None:
    req = operator_restore(site, tmp_path)
    assert restores.claim(site.catalog, req.id)  # as a worker that then died without a trace
    answer = restores.run(site.settings, site.catalog, req.id)
    assert answer["status"] == restores.FAILED
    assert restores.get(site.catalog, req.id).status == restores.FAILED


# ----------------------------------------------------------------------------- pages


def test_the_file_browser_refuses_paths_that_leave_the_backup(site: Site) -> None:
    client = site.client()
    assert log_in(client, "vera") == 303
    listing = client.get(f"/backups/{site.backup_id}", params={"path": "data/characters"})
    assert listing.status_code == 200 and "data/characters/item-00000.json" in listing.text
    assert "configs/" not in listing.text.split('id="files"')[1].split("</table>")[0]
    for hostile in ("../../etc/passwd", "/etc/passwd", "data/../../x", "a\\b"):
        answer = client.get(f"/backups/{site.backup_id}", params={"path": hostile})
        assert answer.status_code == 400, hostile
        assert "root:" not in answer.text
    for bad_id in ("../catalog.sqlite3", "json_backup_x", "%2e%2e"):
        assert client.get(f"/backups/{bad_id}").status_code in (400, 404)


def test_filters_refuse_unknown_values_and_pages_render(site: Site) -> None:
    client = site.client()
    assert log_in(client, "vera") == 303
    assert (
        site.backup_id in client.get("/backups", params={"kind": "json", "status": "verified"}).text
    )
    assert site.backup_id not in client.get("/backups", params={"status": "failed"}).text
    assert client.get("/backups", params={"kind": "nope"}).status_code == 400
    assert client.get("/audit", params={"action": "nope"}).status_code == 400
    audit_page = client.get("/audit", params={"q": "vera"})
    assert 'class="chain healthy"' in audit_page.text and "dashboard.login" in audit_page.text
    trends = client.get("/trends")
    assert trends.text.count("<svg") == 5 and "<polyline" in trends.text
    overview = client.get("/")
    assert 'id="card-json"' in overview.text and site.backup_id in overview.text


def test_the_overview_shows_each_off_site_target_and_how_far_behind(site: Site) -> None:
    """One row per target from `status`'s own figures: a verified backup no target holds yet."""
    targets = '[{"name": "gcs-eu", "provider": "gcs", "bucket": "b"}]'
    settings = site.settings.model_copy(update={"offsite_targets": targets})
    client = TestClient(create_app(settings, site.catalog), client=("testclient", 50000))
    assert log_in(client, "vera") == 303
    page = client.get("/").text
    assert 'id="targets"' in page
    row = page[page.index('id="targets"') :]
    assert "gcs-eu" in row and "1 backup<" in row and "behind" in row


def test_running_work_lists_the_workers_runs_with_a_link_to_flower(site: Site) -> None:
    site.catalog.task_started("3f2b-task", "lifeos.backup.create", 1, "dumps@host")
    done = site.catalog.task_started("9a1c-task", "lifeos.backup.verify", 1, "lifeos@host")
    site.catalog.task_finished(done, "succeeded")
    client = site.client()
    assert log_in(client, "vera") == 303
    page = client.get("/running")  # no Redis configured: the runs, without their progress
    assert page.status_code == 200 and "lifeos.backup.create" in page.text
    assert "9a1c-task" not in page.text and "/task/3f2b-task" in page.text


# ----------------------------------------------------------------------------- rules


def test_production_targets(tmp_path: Path) -> None:
    settings = Settings(backup_root=tmp_path / "b", app_dir=tmp_path / "app")
    assert guard.is_production(settings, "json", str(tmp_path / "app"))
    assert guard.is_production(settings, "json", str(tmp_path / "app" / "data"))
    assert guard.is_production(settings, "json", str(tmp_path))  # holds the app folder
    assert not guard.is_production(settings, "json", str(tmp_path / "restore"))
    assert not guard.is_production(settings, "postgres", "lifeos")  # no database configured
    with_db = Settings(database_url="postgresql://u:pw@db.example:5433/lifeos")
    assert guard.is_production(with_db, "postgres", "lifeos")
    assert not guard.is_production(with_db, "postgres", "lifeos_restore")
    assert guard.is_production(with_db, "postgres", "postgresql://u@db.example:5433/lifeos")
    assert guard.production_name(with_db) == "lifeos"


def test_the_dashboard_listens_beyond_localhost_only_with_tls(tmp_path: Path) -> None:
    serve.check_address(Settings())
    with pytest.raises(ConfigError, match="without TLS"):
        serve.check_address(Settings(dashboard_address="0.0.0.0"))
    serve.check_address(Settings(dashboard_address="0.0.0.0", dashboard_behind_tls_proxy=True))
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        serve.check_address(Settings(dashboard_address="0.0.0.0", dashboard_tls_cert=cert))
    both = Settings(dashboard_address="10.0.0.5", dashboard_tls_cert=cert, dashboard_tls_key=cert)
    serve.check_address(both)
    assert serve.url(both).startswith("https://10.0.0.5:")


def test_cookies_are_secure_behind_a_tls_proxy(site: Site) -> None:
    settings = site.settings.model_copy(update={"dashboard_behind_tls_proxy": True})
    app = create_app(settings, site.catalog)
    header = TestClient(app).get("/login").headers["set-cookie"].lower()
    assert "secure" in header and "httponly" in header and "samesite=strict" in header


def test_charts_escape_text_and_place_points_in_time() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=90)
    svg = charts.line_chart(
        "<size>", {"j<s>": [(start, 10.0), (end, 20.0)]}, start, end, charts.human_bytes
    )
    assert "<size>" not in svg and "&lt;size&gt;" in svg and "j&lt;s&gt;" in svg
    assert svg.count("<circle") == 2 and "<polyline" in svg
    empty = charts.line_chart("none", {}, start, end, charts.human_seconds)
    assert "no data yet" in empty
