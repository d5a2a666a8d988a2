"""The HTTP listener: console, JSON API and ``/metrics``, served by uvicorn on an event loop
of its own, in a thread of its own (see :class:`WebServer`).

We bind the socket ourselves so a busy port is a :class:`~lanalyze.errors.BindError` naming
the config key instead of uvicorn's exit. With ``web.tls_cert``/``web.tls_key`` uvicorn serves
HTTPS on that socket. Every request passes the client-address middleware (the client behind
a trusted reverse proxy), the security-headers middleware, then the
authentication middleware (login, session, CSRF; see :mod:`lanalyze.web.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from lanalyze import metrics
from lanalyze.configbase import is_loopback
from lanalyze.errors import StartError
from lanalyze.log import get_logger
from lanalyze.service import bind_socket
from lanalyze.throttle import LoginLimiter
from lanalyze.web.auth import (
    AuthMiddleware,
    PasswordChecks,
    Revocations,
    SessionCodec,
    Users,
)
from lanalyze.web.auth import load_or_create_secret as _load_secret
from lanalyze.web.config import WebConfig
from lanalyze.web.security import ClientAddressMiddleware, SecurityHeadersMiddleware
from lanalyze.web.tokens import TokenStore, token_path

log = get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = Path("~/.local/share/lanalyze")
WARM_DELAY = 5.0
WARM_INTERVAL = 30.0


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def health_endpoint(request: Request) -> Response:
    return PlainTextResponse("ok\n")


@dataclass
class Console:
    """What every page handler needs, reachable as ``request.app.state.console``."""

    config: WebConfig
    data_dir: Path
    users: Users
    sessions: SessionCodec
    limiter: LoginLimiter
    passwords: PasswordChecks
    tokens: TokenStore


def build_app(
    config: WebConfig | None = None,
    data_dir: Path | None = None,
    *,
    secret: bytes | None = None,
) -> Starlette:
    from lanalyze.web import api_alarms, api_flows, api_mail
    from lanalyze.web.pages import alarms as alarm_pages
    from lanalyze.web.pages import exporters as exporter_pages
    from lanalyze.web.pages import flows as flow_pages
    from lanalyze.web.pages import login as login_pages
    from lanalyze.web.pages import mail as mail_pages

    config = config or WebConfig()
    data_dir = (data_dir or DEFAULT_DATA_DIR).expanduser()
    if secret is None:
        secret_file = config.session_secret_file or data_dir / "web" / "session.key"
        try:
            secret = _load_secret(secret_file.expanduser())
        except (OSError, ValueError) as exc:
            raise StartError(f"web.session_secret_file: {exc}") from None
    users = Users(config.users)
    console = Console(
        config=config,
        data_dir=data_dir,
        users=users,
        sessions=SessionCodec(
            secret,
            config.session_lifetime,
            users,
            Revocations(data_dir / "web" / "sessions-revoked.json", config.session_lifetime),
        ),
        limiter=LoginLimiter(
            config.login_attempts,
            config.login_window,
            global_attempts=config.login_global_attempts,
            trust_for=config.session_lifetime,
        ),
        passwords=PasswordChecks(users, config.login_concurrency),
        tokens=TokenStore(token_path(data_dir)),
    )
    routes: list[BaseRoute] = [
        Route("/metrics", metrics_endpoint),
        Route("/healthz", health_endpoint),
        Mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static"),
        *login_pages.routes,
        *flow_pages.routes,
        *exporter_pages.routes,
        *mail_pages.routes,
        *api_flows.routes,
        *api_mail.routes,
        *alarm_pages.routes,
        *api_alarms.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ClientAddressMiddleware, trusted_proxies=config.trusted_proxies),
            Middleware(SecurityHeadersMiddleware, tls=config.tls),
            Middleware(
                AuthMiddleware,
                config=config,
                codec=console.sessions,
                tokens=console.tokens,
                users=users,
            ),
        ],
    )
    app.state.console = console
    return app


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `lanalyze serve` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """The console's HTTP listener, on an event loop of its own in a thread of its own.

    ``lanalyze serve`` runs the SMTP sessions (and their checks), the queue manager and the
    collectors' upkeep on the main event loop. Under a mail load that loop always has work
    queued, and every step of a page (read the request, hand the queries to a thread, take
    their answer back, render, write) would wait for its turn behind it: measured at 1,000
    msg/s offered with the checks on, a trivial request took 11 ms (median) and up to 120 ms
    instead of 1.5 ms. On its own loop a page waits only for the interpreter, not for every
    SMTP callback due before it (issue 19). Nothing of the console is shared with the main
    loop: its queries run in threads, mail actions go through files, and the reverse-DNS
    names keep their own loop already.
    """

    name = "web"

    def __init__(self, config: WebConfig, data_dir: Path | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self._server: _EmbeddedServer | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._socks: list[socket.socket] = []
        self._app: Starlette | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The first listening address (the only one unless ``web.listen`` lists several)."""
        return self.addresses[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self._socks
        return [(sock.getsockname()[0], sock.getsockname()[1]) for sock in self._socks]

    def _bind(self) -> None:
        """One socket per ``web.listen`` address; all or none (a later failure closes the
        earlier ones), and the error names the address's key."""
        given = self.config.listen
        for index, address in enumerate(self.config.addresses):
            key = "web.listen" if isinstance(given, str) else f"web.listen[{index}]"
            try:
                self._socks.append(bind_socket(address, key))
            except BaseException:
                self._close_sockets()
                raise

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []

    async def start(self) -> None:
        app = self._app = await asyncio.to_thread(build_app, self.config, self.data_dir)
        self._data_dir = app.state.console.data_dir
        self._bind()
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            # Forwarded-for headers are read by ClientAddressMiddleware, from web.trusted_proxies.
            proxy_headers=False,
            timeout_notify=5,
            ssl_certfile=str(self.config.tls_cert) if self.config.tls_cert else None,
            ssl_keyfile=str(self.config.tls_key) if self.config.tls_key else None,
        )
        try:
            if self.config.tls:
                config.load()
        except (OSError, ValueError) as exc:
            self._close_sockets()
            raise StartError(f"web.tls_cert / web.tls_key: {exc}") from None
        self._server = _EmbeddedServer(config)
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                await asyncio.to_thread(self._thread.join)
                if self._failure is not None:
                    raise self._failure
                return
            await asyncio.sleep(0.01)
        exposed = [a for a in self.config.addresses if not is_loopback(a)]
        if exposed and not self.config.tls:
            # Only reachable with web.allow_plain_http = true (the config refuses it otherwise).
            log.warning(
                "web.plain_http",
                extra={"addresses": ",".join(exposed), "hint": "set web.tls_cert and web.tls_key"},
            )
        if not self.config.users:
            log.warning("web.no_users", extra={"hint": "add [[web.users]] to the config"})
        log.info(
            "web.listening",
            extra={
                "address": ",".join(_display(host, port) for host, port in self.addresses),
                "scheme": "https" if self.config.tls else "http",
            },
        )

    def _run(self) -> None:
        """The web thread: its own event loop until :meth:`stop` asks uvicorn to exit."""
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to start() (before listening) or logged
            self._failure = exc
            if self._server is not None and self._server.started:
                log.exception("web.failed")

    async def _serve(self) -> None:
        assert self._server is not None
        warm: asyncio.Task[None] | None = None
        if self.config.warm_ranges:
            warm = asyncio.create_task(self._warm(self._data_dir))
        try:
            await self._server.serve(sockets=self._socks)
        finally:
            if warm is not None:
                warm.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warm

    async def _warm(self, data_dir: Path) -> None:
        """Keep the default dashboards answered (see ``web.warm_ranges``)."""
        from lanalyze.web.pages.flows import warm_dashboards

        await asyncio.sleep(WARM_DELAY)
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(warm_dashboards, data_dir, list(self.config.warm_ranges))
            except Exception:  # a bad file or a bug must not stop the console; next round retries
                log.exception("web.warm_failed")
            await asyncio.sleep(max(WARM_INTERVAL - (time.monotonic() - started), 5))

    async def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            # uvicorn looks at should_exit every 0.1 s on its own loop: a plain flag is enough.
            self._server.should_exit = True
            await asyncio.to_thread(self._thread.join)
        self._close_sockets()
        self._server = None
        self._thread = None
        if self._app is not None:
            self._app.state.console.passwords.close()
            self._app = None
