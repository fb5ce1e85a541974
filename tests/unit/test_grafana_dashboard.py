"""deploy/grafana/lifeos-backup.json queries only metrics the endpoint really exposes.

The exposition is scraped from the collector (lifeos_backup.monitoring.metrics) over a real
catalog holding a verified backup, a drill and an open alert, so every family it can yield is
there; a panel naming a metric that was renamed or never existed fails here, by name.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

from prometheus_client import generate_latest

from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.monitoring import records
from lifeos_backup.monitoring.metrics import PREFIX, registry
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import utcnow
from tests.support.trees import make_tree

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lifeos-backup.json"
METRIC = re.compile(rf"\b{PREFIX}[a-z_]+\b")


def queried() -> set[str]:
    """Every lifeos_backup_* name in every panel's expressions."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 10
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exposed(tmp_path: Path) -> set[str]:
    make_tree(tmp_path / "app", files=3)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        backup_root=tmp_path / "backups",
        app_dir=tmp_path / "app",
        health_kinds="json,postgres",  # postgres has no backup: an open alert
    )
    catalog = Catalog(settings.effective_catalog_url)
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    started = utcnow() - timedelta(seconds=5)
    drill = records.start(catalog, "json", backup_id, started)
    records.finish(
        catalog, drill, status=records.PASSED, finished_at=utcnow(), duration_s=5.0,
        restore_s=2.0, report_path=None, details={}, error=None,
    )  # fmt: skip
    text = generate_latest(registry(lambda: settings)).decode()
    catalog.engine.dispose()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    return {name for name in samples if name}


def test_every_metric_the_grafana_dashboard_queries_is_exposed(tmp_path: Path) -> None:
    names = exposed(tmp_path)
    assert {f"{PREFIX}up", f"{PREFIX}rpo_seconds", f"{PREFIX}alert_active"} <= names
    missing = sorted(queried() - names)
    assert not missing, f"the Grafana dashboard queries metrics that are not exposed: {missing}"


def test_the_check_sees_an_unknown_metric() -> None:
    assert METRIC.findall("rate(lifeos_backup_nope_total[5m]) / lifeos_backup_up") == [
        "lifeos_backup_nope_total",
        "lifeos_backup_up",
    ]


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lifeos-backup" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
