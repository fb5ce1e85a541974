"""`lifeos-backup wal stream`: the WAL stream in the foreground, until SIGINT/SIGTERM.

`up` runs it as one of its children when LIFEOS_WAL_STREAM=1 (and restarts it like the others);
the compose service `wal-stream` runs it alone. The work is lifeos_backup.wal.stream.run; here it
gets its signals, its output lines and one more duty: when pg_receivewal goes down or comes back,
a health check is requested at once, so the alert does not wait for the hourly one (with
synchronous mode the application's commits wait while the receiver is down).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from lifeos_backup.core.settings import Settings
from lifeos_backup.service.up import StopRequest, say
from lifeos_backup.wal.stream import StreamConfig, run

log = logging.getLogger(__name__)

HEALTH_TASK = "lifeos.health.check"


def request_health_check(settings: Settings, state: str) -> None:
    """Enqueue the health check (it evaluates and alerts); a missing broker is only a line."""
    try:
        from lifeos_backup.app.client import make_app

        make_app(settings.redis_url).send_task(HEALTH_TASK)
    except Exception as exc:  # the stream runs on without the broker
        say(f"WAL stream: receiver {state}; could not request a health check: {exc}")
        return
    say(f"WAL stream: receiver {state}; health check requested")


def run_stream(settings: Settings, cfg: StreamConfig) -> None:
    """Run the stream until SIGINT/SIGTERM; pg_receivewal is stopped and the spool sealed."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    mode = "synchronous" if cfg.synchronous else "asynchronous"
    say(f"{stamp} WAL stream ({mode}) on slot {cfg.slot}: {cfg.spool} -> {cfg.archive}")
    with StopRequest() as stop:
        run(
            cfg,
            stopped=lambda: stop.count > 0,
            say=say,
            notify=lambda state: request_health_check(settings, state),
        )
    say("WAL stream stopped")
