"""Serving the dashboard (uvicorn), and the rule for where it may listen.

Beyond localhost the login's password and the session cookie cross a network: that needs TLS,
either here (LIFEOS_DASHBOARD_TLS_CERT and _KEY) or in a proxy in front
(LIFEOS_DASHBOARD_BEHIND_TLS_PROXY=true, which also makes uvicorn trust the proxy's
X-Forwarded-* headers from 127.0.0.1 only, so the login limit sees the client's address). `up`
checks the rule before it starts anything, `dashboard` before it listens.
"""

from __future__ import annotations

import logging

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings

LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1"}


def check_address(settings: Settings) -> None:
    """Refuse a non-local address without TLS, and half a TLS configuration."""
    cert, key = settings.dashboard_tls_cert, settings.dashboard_tls_key
    if bool(cert) != bool(key):
        raise ConfigError(
            "the dashboard's TLS needs both a certificate and its key",
            "only one of LIFEOS_DASHBOARD_TLS_CERT and LIFEOS_DASHBOARD_TLS_KEY is set",
            "set both, or neither",
        )
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise ConfigError(
                "a TLS file of the dashboard is missing", str(path), "check the path, or unset it"
            )
    local = settings.dashboard_address in LOCAL_ADDRESSES
    if not (local or cert or settings.dashboard_behind_tls_proxy):
        raise ConfigError(
            f"refusing to serve the dashboard on {settings.dashboard_address!r} without TLS",
            "passwords and session cookies would cross the network in clear text",
            "set LIFEOS_DASHBOARD_TLS_CERT and LIFEOS_DASHBOARD_TLS_KEY, or "
            "LIFEOS_DASHBOARD_BEHIND_TLS_PROXY=true behind an HTTPS proxy, or "
            "LIFEOS_DASHBOARD_ADDRESS=127.0.0.1",
        )


def url(settings: Settings, port: int | None = None) -> str:
    scheme = "https" if settings.dashboard_tls_cert else "http"
    host = settings.dashboard_address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port or settings.dashboard_port}"


def serve(settings: Settings, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handling: finish requests, then stop)."""
    import uvicorn

    from lifeos_backup.web.app import create_app

    check_address(settings)
    app = create_app(settings)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(
        app,
        host=settings.dashboard_address,
        port=port or settings.dashboard_port,
        ssl_certfile=str(settings.dashboard_tls_cert) if settings.dashboard_tls_cert else None,
        ssl_keyfile=str(settings.dashboard_tls_key) if settings.dashboard_tls_key else None,
        proxy_headers=settings.dashboard_behind_tls_proxy,
        forwarded_allow_ips="127.0.0.1" if settings.dashboard_behind_tls_proxy else None,
        server_header=False,
        log_level=settings.log_level.lower(),
        access_log=True,
    )
