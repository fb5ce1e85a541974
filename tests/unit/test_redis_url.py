"""The settings check Redis URLs without importing redis; the rules must stay redis-py's own."""

from __future__ import annotations

import pytest
from redis.connection import parse_url

from lifeos_backup.core.settings import check_redis_url

URLS = [
    "redis://127.0.0.1:6379/0",
    "redis://:secret@host:6380/2",
    "rediss://user:pw@host/",
    "redis://host",
    "unix:///run/redis.sock?db=1",
    "notaurl",
    "http://host:6379/0",
    "redis://host:port/0",
    "redis://host:99999/0",
    "redis://host:6379/zero",
    "",
]


@pytest.mark.parametrize("url", URLS)
def test_a_url_is_refused_exactly_when_redis_py_refuses_it(url: str) -> None:
    try:
        parse_url(url)
        redis_refuses = False
    except ValueError:
        redis_refuses = True
    try:
        check_redis_url(url)
        we_refuse = False
    except ValueError as exc:
        we_refuse = True
        assert "secret" not in str(exc) and "pw" not in str(exc)
    assert we_refuse == redis_refuses, url


def test_reading_the_settings_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from lifeos_backup.core.settings import Settings; "
        "Settings(redis_url='redis://127.0.0.1:6379/0', _env_file=None); "
        "print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
