"""Routing, host pinning, Beat's interval schedules and what workers reveal: no services needed."""

from __future__ import annotations

import inspect
import os
import re
from types import ModuleType

import pytest
from celery import Celery

import beat_schedule
from lifeos_backup.app.client import backup_chain, make_app
from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.jobs.audit_tasks import TaskRun, initiator_of
from lifeos_backup.jobs.queues import pin_to_host, valid_queue_name
from lifeos_backup.jobs.routes import CREATE, QUEUES, ROTATE, TASK_ROUTES, UPLOAD, VERIFY

SECRET_PARAMETER = re.compile(r"password|secret|token|key|auth|url", re.IGNORECASE)


def _import_worker_app() -> ModuleType:
    """workers.celery_app, without keeping the umask 077 its import sets for worker processes
    (later tests in this process check group-readable file modes)."""
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        import workers.celery_app as module
    finally:
        os.umask(umask)
    return module


_worker = _import_worker_app()
worker_app = _worker.app
configure, redbeat_connection = _worker.configure, _worker.redbeat_connection


def lifeos_tasks() -> dict[str, object]:
    worker_app.loader.import_default_modules()  # the `include` list, as a worker does
    return {name: task for name, task in worker_app.tasks.items() if name.startswith("lifeos.")}


def test_every_task_is_routed_to_a_role_queue() -> None:
    assert set(lifeos_tasks()) == set(TASK_ROUTES), "add the task to jobs/routes.py"
    assert {route["queue"] for route in TASK_ROUTES.values()} == set(QUEUES)
    assert TASK_ROUTES[CREATE]["queue"] == "dumps" and TASK_ROUTES[UPLOAD]["queue"] == "uploads"
    router = worker_app.amqp.router
    assert router.route({}, UPLOAD, (), {})["queue"].name == "uploads"
    assert make_app("redis://127.0.0.1:1/0").amqp.router.route({}, CREATE)["queue"].name == "dumps"


def test_task_names_say_what_they_do_and_take_no_secrets() -> None:
    for name, task in lifeos_tasks().items():
        assert re.fullmatch(r"lifeos\.[a-z]+\.[a-z_]+", name), name
        run = task.run  # type: ignore[attr-defined]
        assert (run.__doc__ or "").strip(), f"{name} needs a docstring (Flower shows it)"
        params = [p for p in inspect.signature(run).parameters if p != "self"]
        assert not [p for p in params if SECRET_PARAMETER.search(p)], (name, params)


def _as_sent(app: Celery) -> list[dict[str, object]]:
    """The chain as the create task sees it in request.chain: later steps, last first."""
    steps, _ref = backup_chain(app, "json", "why", "app")
    return [dict(sig) for sig in reversed(steps.tasks[1:])]


def test_create_pins_the_local_file_steps_to_its_host_queue() -> None:
    chain = _as_sent(make_app("redis://127.0.0.1:1/0"))
    chain.append({"task": "lifeos.health.check", "options": {}})  # a catch-up's last step
    pinned = pin_to_host(chain, "host.a")
    assert sorted(pinned) == sorted([VERIFY, UPLOAD, ROTATE])
    queues = {step["task"]: step["options"].get("queue") for step in chain}  # type: ignore[union-attr]
    assert queues == {VERIFY: "host.a", UPLOAD: "host.a", ROTATE: "host.a",
                      "lifeos.health.check": None}  # fmt: skip
    assert pin_to_host(None, "host.a") == []
    # An explicit queue in the options beats the routing table when the step is sent.
    route = worker_app.amqp.router.route({"queue": "host.a"}, VERIFY, (), {})
    assert route["queue"].name == "host.a"


def test_host_queue_default_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().host_queue.startswith("host.")
    assert Settings(worker_host_queue="host.backup-1").host_queue == "host.backup-1"
    assert valid_queue_name("host.backup-1") == "host.backup-1"
    with pytest.raises(ConfigError, match="not usable"):
        valid_queue_name("host a;rm")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("@every 2s", 2), ("every:30", 30), ("@every 5m", 300), ("@EVERY 1h", 3600)],
)
def test_interval_schedules(text: str, seconds: int) -> None:
    parsed = beat_schedule.parse_crontab(text, "LIFEOS_SCHEDULE_X")
    assert parsed.run_every.total_seconds() == seconds


def test_interval_schedule_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="LIFEOS_SCHEDULE_X"):
        beat_schedule.parse_crontab("@every 0s", "LIFEOS_SCHEDULE_X")
    with pytest.raises(ConfigError, match="LIFEOS_SCHEDULE_X is not a crontab"):
        beat_schedule.parse_crontab("@every", "LIFEOS_SCHEDULE_X")


def test_every_beat_entry_says_beat_initiated_it() -> None:
    schedule = beat_schedule.build_schedule(Settings())
    assert "audit-rotate" in schedule
    for name, entry in schedule.items():
        assert entry["options"]["headers"]["lifeos_initiator"] == "beat", name


def test_redis_password_stays_out_of_the_config_workers_reveal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower shows each worker's `inspect conf` (censored by key name): no password in it."""
    monkeypatch.setenv("LIFEOS_REDIS_URL", "redis://:hunter2-pw@redis:6379/0")
    get_settings.cache_clear()
    try:
        app = Celery("probe", set_as_current=False)
        configure(app)
        shown = repr(app.conf.table(with_defaults=False, censored=True))
        assert "hunter2-pw" not in shown
        assert app.conf.redbeat_redis_url == "redis://redis:6379/0"
        assert app.conf.redbeat_redis_options["password"] == "hunter2-pw"
        assert app.conf.beat_scheduler == "redbeat.RedBeatScheduler"
        assert app.conf.redbeat_lock_timeout == 5 * app.conf.beat_max_loop_interval
    finally:
        get_settings.cache_clear()
    assert redbeat_connection("redis://u:p@h:1/2") == {
        "redbeat_redis_url": "redis://u@h:1/2",
        "redbeat_redis_options": {"password": "p"},
    }


def test_initiator_comes_from_argument_header_or_backup() -> None:
    def run(**kw: object) -> TaskRun:
        return TaskRun(
            name=VERIFY, task_id="t", worker="w", args=(), kwargs=kw.pop("kwargs", {}),  # type: ignore[arg-type]
            status="succeeded", seconds=0.1, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    class Row:
        initiator = "app"

    explicit = run(kwargs={"initiator": "alice"}, header_initiator="beat")
    assert initiator_of(explicit, None) == "alice"
    assert initiator_of(run(header_initiator="beat"), Row()) == "beat"  # type: ignore[arg-type]
    assert initiator_of(run(), Row()) == "app"  # type: ignore[arg-type]
    assert initiator_of(run(), None) == "unknown"
