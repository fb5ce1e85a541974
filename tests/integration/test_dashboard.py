"""The dashboard in a real browser (Debian's headless Chromium through Selenium) over a real
stack: `lifeos-backup dashboard` as a process, a Celery worker, Redis and the catalog.

Each role logs in through the login form; the overview shows a fresh backup healthy and the
same backup critical once its archive is corrupted; the trend charts render with data; an
operator's "Drill now" runs the drill on the worker; a viewer cannot reach a restore form, and
the POST is refused by the server; a restore over production waits for a second admin and then
runs on the worker; a tampered form token and an expired session are refused. One browser for
the module; the pages are waited for, never slept on.

Screenshots of the overview and a backup's page are written to DASHBOARD_SCREENSHOTS
(the README's pictures: `DASHBOARD_SCREENSHOTS=docs pytest tests/integration/
test_dashboard.py`), else into the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from lifeos_backup.app.client import make_app, request_backup
from lifeos_backup.jobs.routes import VERIFY
from lifeos_backup.storage import audit
from lifeos_backup.web import accounts, restores
from tests.integration.test_operations import _chrome
from tests.support.services import free_port
from tests.support.trees import make_tree
from tests.support.worker import CELERY, ChildProcess, LifeosEnv, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
CLI = str(Path(CELERY[0]).with_name("lifeos-backup"))
SECRET = "dashboard-test-key-" + "x" * 40
PASSWORD = "a passphrase for the test"
REPO = Path(__file__).resolve().parents[2]
WAIT = 60  # seconds any page or task may take; the waits end as soon as it is there


class Dashboard(ChildProcess):
    """`lifeos-backup dashboard` on a free port, with the test's settings."""

    def __init__(self, env: LifeosEnv) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = {"LIFEOS_DASHBOARD_SECRET": SECRET, "LIFEOS_DASHBOARD_FLOWER_URL": "http://flower"}
        super().__init__(
            [CLI, "dashboard", "--port", str(self.port)],
            env.subprocess_env(**extra),
            env.root / "dashboard.log",
        )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the dashboard exited:\n{self.log()}")
            try:
                with _opener().open(self.url + "/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the dashboard did not answer:\n{self.log()}")


def _opener(cookie: str | None = None) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    if cookie:
        opener.addheaders = [("Cookie", cookie)]
    return opener


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = _chrome()
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(lifeos_env: LifeosEnv, browser: Any) -> Iterator[Dashboard]:
    catalog = lifeos_env.catalog()
    for name, role in (
        ("vera", "viewer"),
        ("otto", "operator"),
        ("ada", "admin"),
        ("bob", "admin"),
    ):
        accounts.add(catalog, name, role, PASSWORD, "test")
    site = Dashboard(lifeos_env)
    browser.delete_all_cookies()
    yield site
    site.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    chosen = os.environ.get("DASHBOARD_SCREENSHOTS")
    folder = REPO / chosen if chosen else tmp_path  # a relative folder is the repository's
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def until(browser: Any, check: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT, poll_frequency=0.2).until(check)
    except TimeoutException:
        page = browser.page_source[:3000]
        raise AssertionError(f"waited {WAIT}s for {what}; page:\n{page}") from None


def by_id(browser: Any, element: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element)


def css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def log_in(browser: Any, site: Dashboard, name: str) -> None:
    browser.delete_all_cookies()
    browser.get(site.url + "/")
    until(browser, lambda b: b.current_url.startswith(site.url + "/login"), "the login page")
    by_id(browser, "name").send_keys(name)
    by_id(browser, "password").send_keys(PASSWORD)
    by_id(browser, "submit").click()
    until(browser, lambda b: css(b, "#who"), f"{name} to be logged in")
    assert by_id(browser, "who").text.startswith(name)


def reload_until(browser: Any, url: str, check: Callable[[Any], Any], what: str) -> Any:
    """Load `url` again until `check` holds (the server's state changes behind the page)."""

    def fresh(b: Any) -> Any:
        b.get(url)
        return check(b)

    return until(browser, fresh, what)


def backup(env: LifeosEnv) -> str:
    ref = request_backup("json", "dashboard", wait=True, timeout=WAIT, app=make_app())
    return str(ref.backup_id)


# ----------------------------------------------------------------------------- roles and pages


def test_roles_see_the_state_of_a_real_stack(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    dashboard: Dashboard,
    browser: Any,
    shots: Path,
) -> None:
    make_tree(lifeos_env.app_dir, files=24)
    start_worker()
    backup_id = backup(lifeos_env)
    backup(lifeos_env)  # two points in the size and duration charts

    # An operator asks for a drill in the page; the worker runs it; the card shows it passed.
    log_in(browser, dashboard, "otto")
    assert "healthy" in by_id(browser, "card-json").get_attribute("class")
    css(browser, "#card-json button[value=drill]")[0].click()
    until(browser, lambda b: b.current_url.startswith(dashboard.url + "/running"), "running")
    reload_until(
        browser, dashboard.url + "/",
        lambda b: "passed" in by_id(b, "card-json").text, "the drill to pass",
    )  # fmt: skip
    card = by_id(browser, "card-json").text
    assert backup_id not in card  # the newest good backup is the second one
    assert "RTO (drill)" in card and "never" not in card
    assert not css(browser, "#banner")
    browser.save_screenshot(str(shots / "dashboard-overview.png"))

    # The trends: five charts, the size chart with both backups.
    browser.get(dashboard.url + "/trends")
    charts = css(browser, "#charts svg")
    assert len(charts) == 5
    assert len(charts[0].find_elements("css selector", "circle")) == 2
    assert css(browser, "#charts svg polyline")

    # The viewer reads the backup's page, with its files, but no restore form.
    log_in(browser, dashboard, "vera")
    browser.get(f"{dashboard.url}/backups/{backup_id}?path=data/characters")
    until(browser, lambda b: css(b, "#files"), "the file list")
    assert "data/characters/item-00000.json" in by_id(browser, "files").text
    assert "verified" in by_id(browser, "status").text and not css(browser, "#restore-link")
    browser.save_screenshot(str(shots / "dashboard-backup.png"))
    browser.get(f"{dashboard.url}/backups/{backup_id}/restore")
    assert "403" in by_id(browser, "error").text and not css(browser, "#restore-form")
    # The server refuses the POST itself, even with the viewer's valid session and token.
    browser.get(f"{dashboard.url}/backups/{backup_id}")
    token = css(browser, "input[name=csrf]")[0].get_attribute("value")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    form = urllib.parse.urlencode({"csrf": token, "target": str(lifeos_env.app_dir)}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        _opener(cookie).open(f"{dashboard.url}/backups/{backup_id}/restore", data=form)
    assert refused.value.code == 403
    assert restores.recent(lifeos_env.catalog()) == []

    # Corrupt the newest backup's archive: its verify fails on the worker, and with no good
    # backup left of the kind, the overview turns critical for everyone.
    newest = lifeos_env.catalog().list(kind="json")[0]
    for row in lifeos_env.catalog().list(kind="json"):
        archive = lifeos_env.backup_root / row.path
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        with pytest.raises(Exception):  # noqa: B017 - the worker's failure, whatever its class
            make_app().send_task(VERIFY, args=[row.id]).get(timeout=WAIT)
    reload_until(browser, dashboard.url + "/", lambda b: css(b, "#banner"), "the banner")
    assert "CRITICAL" in by_id(browser, "banner").text
    assert "critical" in by_id(browser, "card-json").get_attribute("class")
    assert "no verified json backup" in by_id(browser, "conditions").text
    browser.get(f"{dashboard.url}/backups/{newest.id}")
    assert "failed" in by_id(browser, "status").text

    # Every login is in the audit trail, which still verifies.
    browser.get(dashboard.url + "/audit?action=dashboard.login")
    assert "Hash chain intact" in by_id(browser, "chain").text
    names = [r.actor for r in audit.records(lifeos_env.catalog(), action="dashboard.login")]
    assert names == ["otto", "vera"]


# ----------------------------------------------------------------------------- four eyes


def test_a_production_restore_waits_for_a_second_admin_then_runs(
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., WorkerProcess],
    dashboard: Dashboard,
    browser: Any,
) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    start_worker()
    backup_id = backup(lifeos_env)
    changed = lifeos_env.app_dir / "data" / "characters" / "item-00000.json"
    changed.write_text('{"id": "changed in production"}\n')

    log_in(browser, dashboard, "ada")
    browser.get(f"{dashboard.url}/backups/{backup_id}")
    by_id(browser, "restore-link").click()
    until(browser, lambda b: css(b, "#restore-form"), "the restore form")
    by_id(browser, "target").send_keys(str(lifeos_env.app_dir))
    by_id(browser, "request-restore").click()
    until(browser, lambda b: css(b, "#restores"), "the restores page")
    (req,) = restores.recent(lifeos_env.catalog())
    assert req.production and req.status == "pending" and req.task_id is None
    assert "pending" in by_id(browser, f"request-{req.id}").text
    css(browser, f"#request-{req.id} button.approve")[0].click()  # her own request
    until(browser, lambda b: css(b, "#error"), "the refusal")
    assert "second admin" in by_id(browser, "error").text
    assert restores.get(lifeos_env.catalog(), req.id).status == "pending"
    assert json.loads(changed.read_text())["id"] == "changed in production"

    log_in(browser, dashboard, "bob")
    browser.get(dashboard.url + "/restores")
    css(browser, f"#request-{req.id} button.approve")[0].click()
    reload_until(
        browser, dashboard.url + "/restores",
        lambda b: "succeeded" in by_id(b, f"request-{req.id}").text, "the restore to finish",
    )  # fmt: skip
    assert json.loads(changed.read_text())["id"] == "id-00000"  # production has the backup's
    done = restores.get(lifeos_env.catalog(), req.id)
    assert (done.requested_by, done.approved_by) == ("ada", "bob")
    AsyncResult(str(done.task_id), app=make_app()).get(timeout=WAIT)
    trail = [
        (r["action"], r["initiator"], r["status"], r["detail"].get("approved_by"))
        for r in (audit.as_dict(x) for x in audit.records(lifeos_env.catalog(), action="restore"))
    ]
    assert trail == [
        ("restore.request", "ada", "pending", None),
        ("restore.json", "ada", "succeeded", "bob"),  # the task's record may come first
        ("restore.approve", "bob", "succeeded", None),
    ] or trail == [
        ("restore.request", "ada", "pending", None),
        ("restore.approve", "bob", "succeeded", None),
        ("restore.json", "ada", "succeeded", "bob"),
    ], trail


# ----------------------------------------------------------------------------- forms, sessions


def test_a_tampered_form_and_an_expired_session_are_refused(
    lifeos_env: LifeosEnv, dashboard: Dashboard, browser: Any
) -> None:
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    log_in(browser, dashboard, "otto")
    # The page's own form with its token changed (as a forged form from elsewhere would be).
    browser.execute_script(
        "document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged')"
    )
    css(browser, "#card-json button[value=backup]")[0].click()
    until(browser, lambda b: css(b, "#error"), "the refusal")
    assert "token is missing or wrong" in by_id(browser, "error").text
    assert audit.records(lifeos_env.catalog(), action="dashboard.request") == []

    # A session signed longer ago than LIFEOS_DASHBOARD_SESSION_MINUTES: the login again.
    payload = URLSafeTimedSerializer(SECRET, salt="lifeos-dashboard-session").loads(
        browser.get_cookie("lifeos_session")["value"]
    )
    then = int((datetime.now(UTC) - timedelta(hours=9)).timestamp())

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return then

    old = URLSafeTimedSerializer(SECRET, salt="lifeos-dashboard-session", signer=Then)
    browser.delete_all_cookies()
    browser.add_cookie(
        {"name": "lifeos_session", "value": old.dumps(payload), "path": "/", "httpOnly": True}
    )
    browser.get(dashboard.url + "/backups")
    until(browser, lambda b: css(b, "#message"), "the login page's message")
    assert "your session expired" in by_id(browser, "message").text
    assert browser.current_url.startswith(dashboard.url + "/login")
