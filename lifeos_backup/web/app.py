"""The dashboard's web application (Starlette): routes, the login, roles and form tokens.

Every page goes through `page()`: it reads the session cookie (lifeos_backup.web.sessions),
looks the account up in the catalog on every request (a removed account's session ends at once),
refuses a role below the page's (403, also for a POST made without the form), checks the form's
CSRF token on every POST, runs the page's work in a thread (catalog and Redis calls block), and
turns failures into plain pages: a LifeosError into its what/detail/hint, anything else into
"unexpected error" with the traceback in the log only. No page shows a secret: settings that are
secrets are never rendered, and URLs are shown without their passwords.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lifeos_backup.core.errors import InvalidName, LifeosError, NotFound
from lifeos_backup.core.settings import Settings
from lifeos_backup.storage.catalog import Catalog, open_catalog
from lifeos_backup.web import accounts, actions, charts, logins, pages, restores, trends
from lifeos_backup.web.accounts import ADMIN, OPERATOR, VIEWER, Account
from lifeos_backup.web.sessions import COOKIE, Session, Sessions, same_token, secret_key

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    # No script at all, nothing from elsewhere, never inside another site's frame.
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class Web:
    """What every request shares: settings, catalog, cookie signer, templates, the Celery
    client (made when first needed: the pages that only read work without Redis)."""

    settings: Settings
    catalog: Catalog
    sessions: Sessions
    templates: Jinja2Templates
    celery: Any = None
    flower_url: str = ""

    def client(self) -> Any:
        if self.celery is None:
            from lifeos_backup.app.client import make_app

            self.celery = make_app(self.settings.require_redis_url())
        return self.celery

    def enqueue_restore(self, request_id: int, initiator: str) -> str:
        from lifeos_backup.jobs.audit_tasks import INITIATOR_HEADER

        sent = self.client().send_task(
            restores.RESTORE_TASK, args=[request_id], headers={INITIATOR_HEADER: initiator}
        )
        return str(sent.id)


@dataclass
class Ctx:
    """One request as a page sees it."""

    web: Web
    request: Request
    session: Session
    account: Account | None
    form: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.web.settings

    @property
    def catalog(self) -> Catalog:
        return self.web.catalog

    def arg(self, name: str) -> str:
        return str(self.request.query_params.get(name, ""))[:500]

    def render(self, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(
            account=self.account, csrf=self.session.csrf, flower_url=self.web.flower_url,
            path=self.request.url.path, pages=pages,
        )  # fmt: skip
        return self.web.templates.TemplateResponse(
            self.request, name, context, status_code=status_code
        )


def error_page(
    web: Web, request: Request, status: int, what: str, detail: str = "", hint: str = ""
) -> Response:
    return web.templates.TemplateResponse(
        request, "error.html",
        {"status": status, "what": what, "detail": detail, "hint": hint, "account": None,
         "csrf": "", "path": request.url.path, "pages": pages, "flower_url": web.flower_url},
        status_code=status,
    )  # fmt: skip


Handler = Callable[[Ctx], Response]


def page(
    role: str | None = VIEWER, post: bool = False
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """The wrapper of every route: session, account, role, CSRF, errors (see the module doc)."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            web: Web = request.app.state.web
            loaded = web.sessions.load(request.cookies.get(COOKIE))
            value = ""
            if loaded is None or loaded.expired:  # a new token-only session, and whether an
                session, value = web.sessions.anonymous()  # expired login is to be mentioned
                session = replace(session, expired=loaded is not None)
            else:
                session = loaded
            response = await _answer(web, request, session, handler, role, post)
            if value:
                response.set_cookie(COOKIE, value, **web.sessions.cookie_options())
            return response

        endpoint.__name__ = handler.__name__
        return endpoint

    return wrap


async def _answer(
    web: Web, request: Request, session: Session, handler: Handler, role: str | None, post: bool
) -> Response:
    account = None
    if session.account_id is not None:
        account = await run_in_threadpool(accounts.by_id, web.catalog, session.account_id)
        if account is not None and account.tag != session.tag:
            account = None  # removed and made again, or another password: log in again
    if role is not None and account is None:
        if post:
            return error_page(web, request, 403, "log in first", "this form needs a login")
        target = "/login?next=" + quote(request.url.path, safe="/")
        if session.expired:
            target += "&expired=1"
        return RedirectResponse(target, status_code=303)
    if role is not None and account is not None and not account.may(role):
        return error_page(
            web, request, 403, f"this needs the {role} role", f"{account.name} is {account.role}"
        )
    form: dict[str, str] = {}
    if post:
        raw = await request.form(max_files=0, max_fields=50)
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        if not same_token(session.csrf, form.get("csrf")):
            return error_page(
                web, request, 403, "the form's token is missing or wrong",
                "the page was open too long, or the form came from somewhere else",
                "open the page again and send the form from there",
            )  # fmt: skip
    ctx = Ctx(web, request, session, account, form)
    try:
        return await run_in_threadpool(handler, ctx)
    except NotFound as exc:
        return error_page(web, request, 404, exc.what, exc.detail, exc.hint)
    except restores.NotAllowed as exc:
        return error_page(web, request, 403, exc.what, exc.detail, exc.hint)
    except restores.AlreadyDecided as exc:
        return error_page(web, request, 409, exc.what, exc.detail, exc.hint)
    except LifeosError as exc:
        return error_page(web, request, 400, exc.what, exc.detail, exc.hint)
    except Exception:
        log.exception("dashboard page %s failed", request.url.path)
        return error_page(
            web, request, 500, "unexpected error", "", "the dashboard's log has the details"
        )


def _safe_next(value: str) -> str:
    """Only a path on this site (no `//host`, no scheme): never an open redirect."""
    return (
        value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"
    )


# ----------------------------------------------------------------------------- login


@page(role=None)
def login_form(ctx: Ctx) -> Response:
    message = "your session expired: log in again" if ctx.arg("expired") else ""
    return ctx.render("login.html", next=_safe_next(ctx.arg("next")), message=message)


async def login_submit(request: Request) -> Response:
    """Not through `page()`: a successful login replaces the session cookie."""
    web: Web = request.app.state.web
    session = web.sessions.load(request.cookies.get(COOKIE))
    raw = await request.form(max_files=0, max_fields=10)
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    if session is None or not same_token(session.csrf, form.get("csrf")):
        return error_page(
            web, request, 403, "the form's token is missing or wrong",
            "the login page was open too long, or the form came from somewhere else",
            "open the login page again",
        )  # fmt: skip
    address = request.client.host if request.client else "unknown"
    name, password = form.get("name", ""), form.get("password", "")
    next_page = _safe_next(form.get("next", "/"))
    ctx = Ctx(web, request, session, None)
    try:
        account = await run_in_threadpool(
            logins.log_in, web.settings, web.catalog, name, password, address
        )
    except logins.TooManyAttempts as exc:
        return ctx.render("login.html", 429, next=next_page, message=str(exc))
    except logins.LoginFailed as exc:
        return ctx.render("login.html", 401, next=next_page, message=exc.what)
    _new, value = web.sessions.login(account.id, account.tag)
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(COOKIE, value, **web.sessions.cookie_options())
    return response


@page(role=VIEWER, post=True)
def logout(ctx: Ctx) -> Response:
    assert ctx.account is not None
    ctx.catalog.record_action("dashboard.logout", ctx.account.name, ctx.account.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# ----------------------------------------------------------------------------- pages


@page()
def overview(ctx: Ctx) -> Response:
    return ctx.render("overview.html", report=pages.overview(ctx.settings, ctx.catalog))


@page()
def backup_list(ctx: Ctx) -> Response:
    wanted = pages.BackupFilter(
        ctx.arg("kind"), ctx.arg("status"), ctx.arg("location"), ctx.arg("since")
    ).checked()
    rows = pages.backups(ctx.settings, ctx.catalog, wanted)
    return ctx.render(
        "backups.html", rows=rows, wanted=wanted, kinds=list(pages.LAYOUTS),
        statuses=pages.STATUSES, locations=pages.LOCATIONS,
    )  # fmt: skip


@page()
def backup_page(ctx: Ctx) -> Response:
    backup_id = ctx.request.path_params["backup_id"]
    info = pages.backup(ctx.settings, ctx.catalog, backup_id)
    path = ctx.arg("path")
    entries: list[dict[str, Any]] = []
    more, browse_error = False, ""
    if info["row"].kind == "json" and info["manifest"] is not None:
        try:
            entries, more = pages.files(ctx.settings, ctx.catalog, backup_id, path)
        except InvalidName as exc:
            return ctx.render(
                "error.html", 400, status=400, what=exc.what, detail=exc.detail,
                hint="give a relative path inside the backup, e.g. data/characters",
            )  # fmt: skip
        except LifeosError as exc:
            browse_error = str(exc)
    return ctx.render(
        "backup.html", info=info, entries=entries, more=more, browse_path=path,
        browse_error=browse_error,
    )  # fmt: skip


@page()
def running(ctx: Ctx) -> Response:
    try:
        client = ctx.web.client()
    except LifeosError:
        client = None
    return ctx.render("running.html", runs=pages.running(ctx.settings, ctx.catalog, client))


@page()
def audit_page(ctx: Ctx) -> Response:
    rows, verification, total = pages.audit_page(
        ctx.catalog, ctx.arg("q"), ctx.arg("action"), ctx.arg("since")
    )
    from lifeos_backup.storage.audit import action_filters

    return ctx.render(
        "audit.html", rows=rows, verification=verification, total=total, q=ctx.arg("q"),
        action=ctx.arg("action"), since=ctx.arg("since"), actions=action_filters(),
    )  # fmt: skip


@page()
def trends_page(ctx: Ctx) -> Response:
    from lifeos_backup.monitoring.health import watched_kinds

    kinds = watched_kinds(ctx.settings, ctx.catalog)
    t = trends.build(ctx.catalog, kinds)
    seconds, size = charts.human_seconds, charts.human_bytes
    figures = [
        charts.line_chart(title, series, t.start, t.end, fmt)
        for title, series, fmt in (
            ("Backup size per kind", t.size, size),
            ("Backup duration per kind", t.duration, seconds),
            ("Recovery point (RPO) per kind", t.rpo, seconds),
            ("Restore time in drills (RTO) per kind", t.rto, seconds),
            ("Repository usage", t.usage, size),
        )
    ]
    return ctx.render("trends.html", figures=figures, days=trends.DAYS)


# ----------------------------------------------------------------------------- actions


@page(role=OPERATOR, post=True)
def request_action(ctx: Ctx) -> Response:
    assert ctx.account is not None
    task_id = actions.request(
        ctx.web.client(),
        ctx.catalog,
        ctx.account,
        ctx.form.get("what", ""),
        ctx.form.get("value", ""),
    )
    return RedirectResponse(f"/running?requested={quote(task_id)}", status_code=303)


@page(role=OPERATOR)
def restore_form(ctx: Ctx) -> Response:
    backup_id = ctx.request.path_params["backup_id"]
    info = pages.backup(ctx.settings, ctx.catalog, backup_id)
    return ctx.render("restore.html", info=info, production_dir=str(ctx.settings.app_dir.resolve()))


@page(role=OPERATOR, post=True)
def restore_submit(ctx: Ctx) -> Response:
    assert ctx.account is not None
    req = restores.request(
        ctx.settings, ctx.catalog, ctx.account, ctx.request.path_params["backup_id"],
        ctx.form.get("target", ""), ctx.web.enqueue_restore,
    )  # fmt: skip
    return RedirectResponse(f"/restores#request-{req.id}", status_code=303)


@page()
def restore_list(ctx: Ctx) -> Response:
    return ctx.render("restores.html", requests=restores.recent(ctx.catalog))


@page(role=ADMIN, post=True)
def restore_approve(ctx: Ctx) -> Response:
    assert ctx.account is not None
    restores.approve(ctx.catalog, ctx.account, _request_id(ctx), ctx.web.enqueue_restore)
    return RedirectResponse("/restores", status_code=303)


@page(role=ADMIN, post=True)
def restore_reject(ctx: Ctx) -> Response:
    assert ctx.account is not None
    restores.reject(ctx.catalog, ctx.account, _request_id(ctx))
    return RedirectResponse("/restores", status_code=303)


def _request_id(ctx: Ctx) -> int:
    return int(ctx.request.path_params["request_id"])


async def healthz(_request: Request) -> Response:
    """For Compose's health check: answers without a login, tells nothing."""
    return PlainTextResponse("ok\n")


# ----------------------------------------------------------------------------- the app


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def flower_url(settings: Settings) -> str:
    """Where people reach Flower: LIFEOS_DASHBOARD_FLOWER_URL, else its address and port."""
    if settings.dashboard_flower_url:
        return settings.dashboard_flower_url.rstrip("/")
    host = settings.flower_address
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.flower_port}"


def create_app(settings: Settings, catalog: Catalog | None = None) -> Starlette:
    """The dashboard for `settings`; tests pass their own catalog."""
    secure = bool(settings.dashboard_tls_cert) or settings.dashboard_behind_tls_proxy
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        human_bytes=lambda n: "-" if n is None else charts.human_bytes(float(n)),
        human_seconds=pages.age_text,
        when=pages.when,
    )
    web = Web(
        settings=settings,
        catalog=catalog or open_catalog(settings.effective_catalog_url),
        sessions=Sessions(secret_key(settings), settings.dashboard_session_minutes, secure),
        templates=templates,
        flower_url=flower_url(settings),
    )
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview, methods=["GET"]),
        Route("/backups", backup_list, methods=["GET"]),
        Route("/backups/{backup_id}", backup_page, methods=["GET"]),
        Route("/backups/{backup_id}/restore", restore_form, methods=["GET"]),
        Route("/backups/{backup_id}/restore", restore_submit, methods=["POST"]),
        Route("/running", running, methods=["GET"]),
        Route("/audit", audit_page, methods=["GET"]),
        Route("/trends", trends_page, methods=["GET"]),
        Route("/actions", request_action, methods=["POST"]),
        Route("/restores", restore_list, methods=["GET"]),
        Route("/restores/{request_id:int}/approve", restore_approve, methods=["POST"]),
        Route("/restores/{request_id:int}/reject", restore_reject, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        what = {404: "no such page", 405: "not allowed here"}.get(status, "request refused")
        return error_page(web, request, status, what)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error},
        max_body_size=64 * 1024,
    )
    app.state.web = web
    return app
