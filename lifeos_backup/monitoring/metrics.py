"""Prometheus metrics, computed from the catalog at scrape time.

Backups, drills and health checks run in other processes (workers) than the one serving the
endpoint (`lifeos-backup up` or `lifeos-backup metrics`), so nothing is counted in memory: a
custom collector reads the catalog, the disk and the WAL archive on every scrape (the same
`status.build_status` the CLI prints) and turns it into gauges. A scrape is a handful of indexed
catalog queries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.monitoring.health import RANK
from lifeos_backup.storage.catalog import open_catalog

log = logging.getLogger(__name__)
PREFIX = "lifeos_backup_"


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


class BackupCollector(Collector):
    """Gauges from `build_status`; `lifeos_backup_up` is 0 when the catalog cannot be read."""

    def __init__(self, settings: Callable[[], Settings] = get_settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        from lifeos_backup.monitoring.status import build_status

        up = GaugeMetricFamily(PREFIX + "up", "1 when the catalog could be read for this scrape")
        try:
            settings = self._settings()
            report = build_status(settings, open_catalog(settings.effective_catalog_url))
        except Exception as exc:
            log.error("metrics scrape failed: %s: %s", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _kind_metrics(report["kinds"])
        yield from _health_metrics(report)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ("kind",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _kind_metrics(kinds: list[dict[str, Any]]) -> Iterator[Metric]:
    success = _gauge(
        "last_success_timestamp_seconds", "Verification time of the newest good backup"
    )
    created = _gauge("last_backup_timestamp_seconds", "Creation time of the newest good backup")
    size = _gauge("last_size_bytes", "Archive size of the newest good backup")
    duration = _gauge("last_duration_seconds", "Time the newest good backup took to create")
    rpo = _gauge("rpo_seconds", "Current recovery point: age of the newest good backup (or WAL)")
    rto = _gauge("rto_seconds", "Current recovery time estimate: restore time of the last drill")
    drill_ok = _gauge("drill_last_success", "1 if the newest restore drill passed, else 0")
    drill_at = _gauge("drill_last_timestamp_seconds", "Start time of the newest restore drill")
    drill_time = _gauge("drill_last_duration_seconds", "Duration of the newest restore drill")
    drill_restore = _gauge("drill_last_restore_seconds", "Restore time in the newest drill")
    for item in kinds:
        label = [item["kind"]]
        good = item["newest_good"]
        if good:
            for gauge, value in (
                (success, _ts(good["verified_at"])),
                (created, _ts(good["created_at"])),
                (size, good["size"]),
                (duration, good["duration_s"]),
            ):
                if value is not None:
                    gauge.add_metric(label, float(value))
        if item["rpo_s"] is not None:
            rpo.add_metric(label, float(item["rpo_s"]))
        if item["rto_s"] is not None:
            rto.add_metric(label, float(item["rto_s"]))
        drill = item["last_drill"]
        if drill:
            drill_ok.add_metric(label, 1.0 if drill["status"] == "passed" else 0.0)
            drill_at.add_metric(label, _ts(drill["started_at"]) or 0.0)
            if drill["duration_s"] is not None:
                drill_time.add_metric(label, float(drill["duration_s"]))
            if drill["restore_s"] is not None:
                drill_restore.add_metric(label, float(drill["restore_s"]))
    yield from (success, created, size, duration, rpo, rto)
    yield from (drill_ok, drill_at, drill_time, drill_restore)


def _health_metrics(report: dict[str, Any]) -> Iterator[Metric]:
    status = _gauge("health_status", "Worst condition: 0 healthy, 1 degraded, 2 critical", ())
    status.add_metric([], float(RANK[report["status"]]))
    yield status
    alert = _gauge(
        "alert_active",
        "1 for every health condition (alert) that holds now",
        ("condition", "kind", "severity"),
    )
    for condition in report["conditions"]:
        alert.add_metric([condition["name"], condition["kind"] or "", condition["severity"]], 1.0)
    yield alert
    free = _gauge("disk_free_bytes", "Free bytes on the backup root's file system", ())
    free.add_metric([], float(report["disk"]["free_bytes"]))
    total = _gauge("disk_total_bytes", "Size of the backup root's file system", ())
    total.add_metric([], float(report["disk"]["total_bytes"]))
    yield from (free, total)
    wal = report.get("wal")
    if wal and wal.get("age_seconds") is not None:
        age = _gauge("wal_archive_age_seconds", "Age of the newest archived WAL segment", ())
        age.add_metric([], float(wal["age_seconds"]))
        yield age


def registry(settings: Callable[[], Settings] = get_settings) -> CollectorRegistry:
    """A registry holding only our collector (not the process metrics of the serving process)."""
    reg = CollectorRegistry(auto_describe=False)  # no scrape at registration time
    reg.register(BackupCollector(settings))
    return reg


def serve(settings: Settings, port: int | None = None) -> Callable[[], None]:
    """Start the endpoint in a background thread; returns a function that stops it."""
    chosen = settings.metrics_port if port is None else port
    server, thread = start_http_server(chosen, addr=settings.metrics_address, registry=registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def serve_in_background(settings: Settings, say: Callable[[str], None]) -> Callable[[], None]:
    """For `lifeos-backup up`: start unless LIFEOS_METRICS_PORT=0; a busy port only warns."""
    if not settings.metrics_port:
        return lambda: None
    try:
        stop = serve(settings)
    except OSError as exc:
        say(f"warning: metrics endpoint not started on port {settings.metrics_port}: {exc}")
        return lambda: None
    say(f"Metrics: http://{settings.metrics_address}:{settings.metrics_port}/metrics")
    return stop


def wait_forever(stop_event: threading.Event | None = None) -> None:
    (stop_event or threading.Event()).wait()
