"""``/login`` and ``/logout``: the only pages reachable without a session (besides static).

A login attempt is counted before its password is checked, per client address, per (address,
user name) pair and, for addresses that have not logged in recently, against a global cap
(:class:`LoginLimiter`); over a limit the answer is 429 with ``Retry-After`` and the password is
not even checked. The argon2 check runs on a few threads of its own
(:class:`~lanalyze.web.auth.PasswordChecks`) so it never blocks the event loop and a burst
cannot allocate 64 MiB per request at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from lanalyze.log import RateLimiter, get_logger
from lanalyze.web.auth import LOGINS, LOGINS_LIMITED, cookie_names
from lanalyze.web.templating import render

log = get_logger(__name__)
_log_limit = RateLimiter(interval=60, burst=5)
_LIMIT_NAMES = {"pair": "pair", "addr": "address", "*": "global"}


def _safe_next(target: str | None) -> str:
    """Only a local path: an open redirect to another site would help phishing."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_form(request: Request, error: str = "", status_code: int = 200) -> Response:
    console = request.app.state.console
    _, login_cookie = cookie_names(console.config.tls)
    token = request.cookies.get(login_cookie) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        {
            "login_token": token,
            "next": _safe_next(request.query_params.get("next")),
            "error": error,
            "no_users": not console.users,
        },
        status_code=status_code,
    )
    response.set_cookie(
        login_cookie,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=console.config.tls,
        path="/",
    )
    return response


async def login_page(request: Request) -> Response:
    if request.scope.get("state", {}).get("session") is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_form(request)


async def login_submit(request: Request) -> Response:
    console = request.app.state.console
    form = await request.form()
    name = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    target = _safe_next(str(form.get("next", "/")))
    client = request.client.host if request.client else "unknown"
    limiter = console.limiter
    keys = limiter.keys(client, name)
    attempt_at = time.monotonic()
    wait, full = limiter.acquire(keys, attempt_at)
    if wait:
        LOGINS.labels("limited").inc()
        limit = _LIMIT_NAMES.get((full or "").split(":", 1)[0], "global")
        LOGINS_LIMITED.labels(limit).inc()
        if _log_limit.allow(client) is not None:
            log.warning("web.login_limited", extra={"peer": client, "user": name, "limit": limit})
        response = _login_form(
            request, f"Too many failed logins. Try again in {wait} seconds.", 429
        )
        response.headers["retry-after"] = str(wait)
        return response
    user = await console.passwords.verify(name, password)
    if user is None:
        LOGINS.labels("failed").inc()
        if _log_limit.allow(client) is not None:
            log.warning("web.login_failed", extra={"peer": client, "user": name})
        return _login_form(request, "Wrong user name or password.", 401)
    limiter.forget(keys[0])
    limiter.succeeded(keys[1:], attempt_at)
    limiter.trust(client)
    LOGINS.labels("ok").inc()
    log.info("web.login", extra={"peer": client, "user": name})
    value, _session = console.sessions.issue(user)
    session_cookie, login_cookie = cookie_names(console.config.tls)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        session_cookie,
        value,
        max_age=console.config.session_lifetime,
        httponly=True,
        samesite="lax",
        secure=console.config.tls,
        path="/",
    )
    response.delete_cookie(login_cookie, path="/")
    return response


async def logout(request: Request) -> Response:
    console = request.app.state.console
    session = request.scope.get("state", {}).get("session")
    if session is not None and not session.token:
        # An API token is ended by `lanalyze web token revoke`, not here: revoking its
        # id-less session would end every cookie session (Revocations.revoke).
        # The cookie is deleted below, but a copy (stolen, or in another browser tab's
        # jar) would stay valid until it expires: record it as ended for every process.
        await asyncio.to_thread(console.sessions.revoke, session)
        log.info("web.logout", extra={"user": session.user})
    session_cookie, _ = cookie_names(console.config.tls)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(session_cookie, path="/", secure=console.config.tls, httponly=True)
    return response


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
