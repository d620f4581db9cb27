"""The migration console (docs/console.md): `/admin/`, one server-rendered page (Overview, Cohorts,
Shadow, Actions) for the people who decide when the old path can go. It lives wherever the admin
routes live (docs/security.md: only with `rollout.admin_token`, on the admin listener when
`rollout.admin_on_metrics_port`), and works without JavaScript: sorting and filtering are query
parameters, actions are forms.

Sign-in: the admin token, posted once from a form, is checked by the admin routes' own guard (the
same allowances as the header) and exchanged for a signed, expiring cookie
(gateway/console/signin.py): `HttpOnly`, `SameSite=Strict`, `Path=/admin`, `Secure` when the
request came over TLS. Every form that changes something carries a CSRF field derived from the
cookie. Bad input (an unknown cohort, an expired cookie, a forged CSRF field, a failure reading
the ledger) is answered with a page of its own, never a traceback; the JSON API's errors stay
the standard ones.

The page reads the ledger (one history read, as the report does), the rollout's and the shadow
compare's `describe()`-style snapshots and two gauges: nothing the request path locks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from gateway.cohorts import Cohort
from gateway.console import model, signin
from gateway.console.chart import burndown_svg
from gateway.contract import GatewayError
from gateway.http import keys
from gateway.http.admin import AdminGuard, rearm_cohort
from gateway.migration.clock import day_of
from gateway.store.base import StoreUnavailable

log = structlog.get_logger("gateway.console")

HOME = "/admin/"
SIGN_IN = "/admin/sign-in"
SIGN_OUT = "/admin/sign-out"
REARM = "/admin/guardrails/{cohort}/rearm"
# Package data, served as they are; the browser asks for an icon whatever the page says.
STATIC = {"/admin/console.css": ("console.css", "text/css"), "/admin/favicon.svg": ("favicon.svg", "image/svg+xml")}
# No script runs on these pages; styles only from the stylesheet; forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Page = Callable[[web.Request, "Console"], Awaitable[web.StreamResponse]]


class Console:
    """What the pages share: the gateway they show, the admin guard, the cookie key."""

    def __init__(self, gateway: web.Application, guard: AdminGuard) -> None:
        self.gateway = gateway
        self.guard = guard
        self.key = signin.signing_key(gateway[keys.CONFIG].rollout.admin_token)

    def signed_in(self, request: web.Request) -> tuple[str, signin.Signin | None]:
        return signin.check(self.key, request.cookies.get(signin.COOKIE), time.time())


def _page(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _problem(request: web.Request, status: int, title: str, detail: str, **extra: Any) -> web.Response:
    return _page(request, "problem.html", {"title": title, "detail": detail, "signin": None} | extra, status)


def _sign_in_page(request: web.Request, notice: str | None = None, status: int = 200) -> web.Response:
    response = _page(request, "signin.html", {"title": "Sign in", "notice": notice, "signin": None}, status)
    if request.cookies.get(signin.COOKIE) is not None:
        response.del_cookie(signin.COOKIE, path="/admin")
    return response


def _see_other(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


# The pages.


async def home(request: web.Request, console: Console) -> web.StreamResponse:
    state, session = console.signed_in(request)
    if session is None:
        notice = "Your sign-in has expired: sign in again." if state == signin.EXPIRED else None
        return _sign_in_page(request, notice)
    started = time.perf_counter()
    context = await _console_context(request, console)
    response = _page(request, "console.html", context | {"signin": session, "csrf": session.csrf(console.key)})
    # The page's own server time, for whoever measures it (docs/console.md).
    response.headers["Server-Timing"] = f"page;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


async def _console_context(request: web.Request, console: Console) -> dict[str, Any]:
    gateway = console.gateway
    config, migration, rollout = gateway[keys.CONFIG], gateway[keys.MIGRATION], gateway[keys.ROLLOUT]
    retention = config.migration.retention_days
    report, history = await migration.report_and_history(retention)
    now = migration.clock.now()
    today = day_of(now)
    described = rollout.describe()
    rows = model.cohort_rows(report, history, rollout.flags.migration, described["guardrails"], now, today, retention)
    app, sort = request.query.get("app") or None, request.query.get("sort") or model.DEFAULT_SORT
    reverse = request.query.get("order") == "reverse"
    breakers = gateway[keys.SESSIONS].upstream.breakers
    shadow = gateway.get(keys.SHADOW)
    overview = model.overview(
        described,
        report,
        history,
        today,
        gateway[keys.METRICS].registry.get_sample_value("gateway_store_sessions"),
        config.session.max_sessions,
        await gateway[keys.STORE].ready(),
        breakers.open_count() if breakers is not None else None,
    )
    return {
        "title": "Migration console",
        "overview": overview,
        "rows": model.select(rows, app, sort, reverse),
        "all_rows": rows,
        "apps": model.apps(rows),
        "app": app,
        "unknown_app": app is not None and app not in model.apps(rows),
        "sort": sort if sort in model.SORTS else model.DEFAULT_SORT,
        "reverse": reverse,
        "sorts": model.SORTS,
        "chart": burndown_svg,
        "report": report,
        "shadow": model.shadow_view(
            shadow.samples() if shadow else None, shadow.report() if shadow else None, time.time()
        ),
        "tripped": [r for r in rows if r.guardrail.tripped],
        "tripped_names": overview.tripped,
        "rearmed": request.query.get("rearmed"),
        "generated": model.iso(now),
    }


async def sign_in(request: web.Request, console: Console) -> web.StreamResponse:
    if request.method == "GET":
        return _see_other(HOME)
    wait = console.guard.throttled(request, console.gateway)
    if wait:
        return _problem(
            request,
            429,
            "Too many wrong tokens",
            f"Sign-in is paused for this address: try again in {wait} seconds.",
            retry_after=wait,
        )
    given = (await _form(request)).get("token", "")
    if not console.guard.accepts(request, console.gateway, given):
        return _sign_in_page(request, "That is not the admin token.", status=401)
    value, _ = signin.issue(console.key, time.time())
    response = _see_other(HOME)
    response.set_cookie(
        signin.COOKIE,
        value,
        max_age=signin.LIFETIME,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    log.info("console_signed_in", client=request.remote)
    return response


async def sign_out(request: web.Request, console: Console) -> web.StreamResponse:
    _, session = console.signed_in(request)
    if session is not None and not signin.csrf_ok(console.key, session, (await _form(request)).get("csrf")):
        return _forged(request)
    response = _see_other(HOME)
    response.del_cookie(signin.COOKIE, path="/admin")
    return response


def _forged(request: web.Request) -> web.Response:
    log.warning("console_csrf_refused", route=request.match_info.route.resource.canonical, client=request.remote)
    return _problem(
        request,
        403,
        "This form is not from the console",
        "The form's check field did not match your sign-in, so nothing was done. "
        "Open the console again and use its own buttons.",
    )


async def rearm(request: web.Request, console: Console) -> web.StreamResponse:
    state, session = console.signed_in(request)
    if session is None:
        notice = "Your sign-in has expired: sign in again." if state == signin.EXPIRED else None
        return _sign_in_page(request, notice, status=401 if request.method == "POST" else 200)
    name = request.match_info["cohort"]
    cohort = Cohort.parse(name)
    rails = console.gateway[keys.ROLLOUT].guardrails
    # describe() lists every cohort the guardrails hold a state or a reading for: one they do
    # not list cannot be tripped. A cohort the client table can produce is a real one even when
    # unlisted (a re-arm clears its readings): that is "armed", not "no such cohort".
    cohorts = (rails.describe()["cohorts"] if rails is not None else {}) or {}
    known = cohort is not None and (name in cohorts or cohort in console.gateway[keys.CLIENTS].cohorts)
    if not known:
        return _problem(
            request,
            404,
            "No such cohort",
            f"No client the configuration classifies is named “{name}”: cohorts are written "
            "app/platform/version, as the Cohorts table shows them. Nothing was done.",
            signin=session,
            csrf=session.csrf(console.key),
        )
    if request.method == "POST":
        if not signin.csrf_ok(console.key, session, (await _form(request)).get("csrf")):
            return _forged(request)
        if await rearm_cohort(request, console.gateway, cohort, "console"):
            return _see_other(f"{HOME}?rearmed={name}#actions")
    if cohorts.get(name, {}).get("state") != "tripped":
        return _problem(
            request,
            409,
            "Not tripped",
            f"The guardrail of {name} is armed: there is nothing to re-arm.",
            signin=session,
            csrf=session.csrf(console.key),
        )
    return _page(
        request,
        "confirm.html",
        {"title": f"Re-arm {name}?", "name": name, "state": cohorts[name], "signin": session}
        | {"csrf": session.csrf(console.key), "iso": model.iso},
    )


async def static(request: web.Request, console: Console) -> web.StreamResponse:
    name, content_type = STATIC[request.match_info.route.resource.canonical]
    body = resources.files("gateway.console").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


async def to_home(request: web.Request, console: Console) -> web.StreamResponse:
    return _see_other(HOME)


def add_routes(app: web.Application, gateway: web.Application, guard: AdminGuard | None) -> None:
    """The console's pages on `app` (where the admin routes are), showing `gateway`; nothing
    without an admin token (`guard` None)."""
    if guard is None:
        return
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    # A cohort as one path segment (its text form may hold "/"); query strings without empty keys.
    env.filters["segment"] = lambda text: quote(str(text), safe="")
    env.filters["query"] = lambda params: urlencode({k: v for k, v in params.items() if v})
    console = Console(gateway, guard)

    def page(view: Page, *methods: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.method not in methods:
                response = _problem(request, 405, "Not here", f"This page answers {' and '.join(methods)} only.")
                response.headers["Allow"] = ", ".join(methods)
                return response
            try:
                return await view(request, console)
            except StoreUnavailable:
                return _problem(request, 503, "The ledger cannot be read", "Redis is not answering; try again shortly.")
            except GatewayError as exc:
                return _problem(request, exc.kind.status, exc.kind.message, "Try again shortly.")
            except web.HTTPException:
                raise
            except Exception:
                # The traceback goes to the log (which never holds tokens); the page says only that.
                log.exception("unhandled_error", route=request.match_info.route.resource.canonical)
                return _problem(request, 500, "Something went wrong", "The console could not build this page.")

        return handler

    app.router.add_route("*", "/admin", page(to_home, "GET"))
    app.router.add_route("*", HOME, page(home, "GET"))
    app.router.add_route("*", SIGN_IN, page(sign_in, "GET", "POST"))
    app.router.add_route("*", SIGN_OUT, page(sign_out, "POST"))
    app.router.add_route("*", REARM, page(rearm, "GET", "POST"))
    for path in STATIC:
        app.router.add_route("*", path, page(static, "GET"))
