"""Who may use the console: password check, signed session cookies, CSRF, login rate limit.

Trust: every request is hostile until its session cookie verifies. Passwords are checked
against argon2 hashes from the config (argon2-cffi); unknown users cost the same work as known
ones so timing does not reveal which names exist. Sessions are stateless cookies signed with
itsdangerous (HMAC over a key kept in a 0600 file), carrying the user, a CSRF token, a session
id and a fingerprint of the password hash, so changing a password in the config ends that
user's sessions; logout records the session id in a revocation file in the data directory
(:class:`Revocations`), so a copied cookie ends too, in every console process and after a
restart. State-changing requests must carry the session's CSRF token (synchronizer token:
form field ``csrf`` or header ``X-CSRF-Token``) and, when the browser sends one, a same-origin
``Origin``. The login form, having no session yet, uses a double-submit cookie.

The middleware is plain ASGI (not ``BaseHTTPMiddleware``) so it can buffer a small form body to
read the CSRF field and replay it to the handler.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lanalyze.datadir import file_signature
from lanalyze.log import RateLimiter, get_logger
from lanalyze.metrics import REGISTRY
from lanalyze.web.config import WebConfig, WebUser
from lanalyze.web.tokens import TokenStore

log = get_logger(__name__)
_revocation_log = RateLimiter(interval=60, burst=1)
_token_log = RateLimiter(interval=60, burst=3)

LOGINS = Counter(
    "lanalyze_web_logins_total",
    "Console login attempts by result (ok, failed, limited).",
    ["result"],
    registry=REGISTRY,
)
LOGINS_LIMITED = Counter(
    "lanalyze_web_logins_limited_total",
    "Login attempts refused with 429 before any password check, by the full limit (pair: one "
    "address guessing one user; address: one address, any user; global: all unknown clients).",
    ["limit"],
    registry=REGISTRY,
)
VERIFYING = Gauge(
    "lanalyze_web_password_checks",
    "argon2 password checks running or waiting for one of `web.login_concurrency` slots.",
    registry=REGISTRY,
)
TOKEN_REQUESTS = Counter(
    "lanalyze_web_token_requests_total",
    "Requests carrying an API token (Authorization: Bearer), by result (ok; invalid: unknown, "
    "revoked, malformed, or its user no longer in web.users).",
    ["result"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "lanalyze_web_rejected_requests_total",
    "Requests refused by the console's guard, by reason (csrf, origin, too_large).",
    ["reason"],
    registry=REGISTRY,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BODY = 64 * 1024
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user name is unknown, so both paths cost one argon2 run."""
    return _HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def load_or_create_secret(path: Path) -> bytes:
    """The session signing key: read it, or create 32 random bytes with mode 0600."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    data = data.strip()
    if len(data) < 32:
        raise ValueError(f"{path}: session secret must be at least 32 bytes")
    return data


def _fingerprint(user: WebUser) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    sid: str = ""
    """Random id that logout revokes; empty in cookies issued before sessions had one."""
    issued: float = 0.0
    """When the cookie was signed (Unix seconds, whole: itsdangerous' resolution)."""
    token: str = ""
    """Id of the API token the request came with; empty for a cookie session."""


class Users:
    def __init__(self, users: Iterable[WebUser]) -> None:
        self._by_name = {user.name: user for user in users}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def get(self, name: str) -> WebUser | None:
        return self._by_name.get(name)

    def verify(self, name: str, password: str) -> WebUser | None:
        """The user when the password matches; blocking (argon2): call from a thread."""
        user = self._by_name.get(name)
        try:
            _HASHER.verify(user.password_hash if user else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        return user


class PasswordChecks:
    """Runs argon2 verifications on ``slots`` threads of their own.

    Each verification holds 64 MiB (argon2-cffi's default ``memory_cost``) for tens of
    milliseconds; a burst of logins waits here as asyncio futures instead of allocating all at
    once, and never occupies the default executor the pages' queries run on. How many can wait
    is bounded by the login limiter, which counts an attempt before it gets here.
    """

    def __init__(self, users: Users, slots: int) -> None:
        self._users = users
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="web-argon2")

    async def verify(self, name: str, password: str) -> WebUser | None:
        loop = asyncio.get_running_loop()
        VERIFYING.inc()
        try:
            return await loop.run_in_executor(self._executor, self._users.verify, name, password)
        finally:
            VERIFYING.dec()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Revocations:
    """Sessions ended before their cookie expires (logout), shared through a file.

    Cookies are signed, not stored, so ending one needs a list of the ended ones:
    ``<data_dir>/web/sessions-revoked.json`` (mode 0600), ``{"sessions": {id: expiry},
    "all": time}``. It survives restarts and every console process on the data directory
    sees it: a reader stats the file on each check and reloads it when it was replaced;
    writers take ``flock`` on a lock file next to it, read, modify and atomically replace it.
    Entries are dropped once their cookie would have expired anyway; should more than
    :attr:`MAX_ENTRIES` remain, every session issued so far is ended (``all``) and the list
    emptied, so the file stays bounded without un-revoking anything. A file we cannot parse is
    logged and, at the next write, treated the same way (fail closed).
    """

    MAX_ENTRIES = 10_000

    def __init__(self, path: Path, lifetime: int) -> None:
        self.path = path
        self.lifetime = lifetime
        self._seen: tuple[int, int, int] | None = None
        self._sessions: dict[str, float] = {}
        self._all = 0.0
        self._lock = threading.Lock()

    def _load(self) -> tuple[dict[str, float], float] | None:
        """The file's contents; empty when absent, None when unreadable."""
        try:
            data = json.loads(self.path.read_bytes())
            sessions = {str(k): float(v) for k, v in dict(data.get("sessions", {})).items()}
            return sessions, float(data.get("all", 0.0))
        except FileNotFoundError:
            return {}, 0.0
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            if _revocation_log.allow(str(self.path)) is not None:
                log.error(
                    "web.revocations_unreadable", extra={"path": str(self.path), "error": str(exc)}
                )
            return None

    def _refresh(self) -> None:
        seen = file_signature(self.path)
        if seen == self._seen:
            return
        loaded = self._load()
        if loaded is not None:  # an unreadable file keeps what we knew
            self._sessions, self._all = loaded
            self._seen = seen

    def revoked(self, session: Session) -> bool:
        with self._lock:
            self._refresh()
            return session.issued <= self._all or session.sid in self._sessions

    def revoke(self, session: Session, now: float | None = None) -> None:
        """End ``session`` everywhere; blocking (file lock, fsync): call from a thread.

        A cookie without an id (issued by an older version) can only be ended with every
        session issued up to now.
        """
        now = time.time() if now is None else now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            loaded = self._load()
            sessions, everything = loaded if loaded is not None else ({}, now)
            sessions = {sid: expiry for sid, expiry in sessions.items() if expiry > now}
            if session.sid:
                # itsdangerous accepts a cookie up to and including its max_age: one second more.
                sessions[session.sid] = session.issued + self.lifetime + 1
            else:
                everything = max(everything, now)
            if len(sessions) > self.MAX_ENTRIES:
                sessions, everything = {}, max(everything, now)
            self._write({"sessions": sessions, "all": everything})
        finally:
            os.close(lock_fd)
        with self._lock:
            self._seen = None  # reload at the next check, from the file just written
            self._sessions, self._all = sessions, everything

    def _write(self, data: dict[str, Any]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(data).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class SessionCodec:
    """Session <-> signed cookie value; ended sessions are looked up in :class:`Revocations`."""

    def __init__(
        self, secret: bytes, lifetime: int, users: Users, revocations: Revocations | None = None
    ) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="lanalyze.session")
        self.lifetime = lifetime
        self._users = users
        self.revocations = revocations

    def issue(self, user: WebUser) -> tuple[str, Session]:
        csrf, sid = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
        value = self._serializer.dumps(
            {"u": user.name, "c": csrf, "h": _fingerprint(user), "s": sid}
        )
        return value, Session(user.name, csrf, sid, time.time())

    def read(self, value: str) -> Session | None:
        try:
            data, signed_at = self._serializer.loads(
                value, max_age=self.lifetime, return_timestamp=True
            )
        except (BadSignature, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        user = self._users.get(str(data.get("u", "")))
        if user is None or not same_token(str(data.get("h", "")), _fingerprint(user)):
            return None
        session = Session(
            user.name, str(data.get("c", "")), str(data.get("s", "")), signed_at.timestamp()
        )
        if self.revocations is not None and self.revocations.revoked(session):
            return None
        return session

    def revoke(self, session: Session) -> None:
        """Logout: blocking, call from a thread."""
        if self.revocations is not None:
            self.revocations.revoke(session)


def cookie_names(tls: bool) -> tuple[str, str]:
    """Session and login-form cookie names; ``__Host-`` pins them to this origin over TLS."""
    prefix = "__Host-" if tls else ""
    return f"{prefix}lanalyze_session", f"{prefix}lanalyze_login"


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: S112  (a malformed cookie header is the client's problem)
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


class AuthMiddleware:
    """Requires a session for everything but the login page, static files, health and the
    OpenAPI document.

    Sets ``scope["state"]["session"]`` (a :class:`Session` or ``None``). Pages without a
    session redirect to ``/login``; ``/api/`` answers 401 JSON. ``/metrics`` is open to the
    configured networks only.

    A request with ``Authorization: Bearer`` is judged by its API token alone (cookies are
    not read): a valid token acts as its user, anything else is 401. CSRF does not apply to
    it: a browser never adds that header by itself, so a forged cross-site request cannot
    carry one; its body is still read with the same bound.
    """

    PUBLIC_PREFIXES = ("/static/", "/login", "/healthz")
    # The API's description holds no data; clients read it before they log in.
    PUBLIC_PATHS = frozenset({"/api/openapi.json"})

    def __init__(
        self,
        app: ASGIApp,
        config: WebConfig,
        codec: SessionCodec,
        tokens: TokenStore | None = None,
        users: Users | None = None,
    ) -> None:
        self.app = app
        self.codec = codec
        self.tokens = tokens
        self.users = users
        self.session_cookie, self.login_cookie = cookie_names(config.tls)
        self.metrics_networks = [
            ipaddress.ip_network(n, strict=False) for n in config.metrics_networks
        ]

    def _metrics_open(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.metrics_networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            await self._bearer(scope, receive, send, authorization[7:].strip())
            return
        path: str = scope["path"]
        cookies = _cookies(scope)
        session = None
        if self.session_cookie in cookies:
            session = self.codec.read(cookies[self.session_cookie])
        scope.setdefault("state", {})["session"] = session
        public = (
            path.startswith(self.PUBLIC_PREFIXES)
            or path in self.PUBLIC_PATHS
            or (path == "/metrics" and self._metrics_open(scope))
        )
        if session is None and not public:
            await self._unauthenticated(scope, send)
            return
        if scope["method"] not in SAFE_METHODS:
            expected = session.csrf if session else cookies.get(self.login_cookie, "")
            ok, receive = await self._check_csrf(scope, receive, send, expected)
            if not ok:
                return
        await self.app(scope, receive, send)

    async def _bearer(self, scope: Scope, receive: Receive, send: Send, presented: str) -> None:
        entry = self.tokens.authenticate(presented) if self.tokens is not None else None
        user = self.users.get(entry.user) if entry is not None and self.users else None
        if entry is None or user is None:
            TOKEN_REQUESTS.labels("invalid").inc()
            client = (scope.get("client") or ("?",))[0]
            suppressed = _token_log.allow(client)
            if suppressed is not None:
                log.warning(
                    "web.token_refused",
                    extra={
                        "client": client,
                        "path": scope["path"],
                        "reason": "unknown or revoked token" if entry is None else "no such user",
                        "suppressed": suppressed,
                    },
                )
            await _respond(
                send,
                401,
                b'{"error": "invalid or revoked API token"}\n',
                "application/json",
                [(b"www-authenticate", b'Bearer realm="lanalyze", error="invalid_token"')],
            )
            return
        TOKEN_REQUESTS.labels("ok").inc()
        scope.setdefault("state", {})["session"] = Session(user.name, "", token=entry.id)
        if scope["method"] not in SAFE_METHODS:
            body = await _read_body(receive, MAX_FORM_BODY)
            if body is None:
                REJECTED.labels("too_large").inc()
                await _respond(send, 413, b"request body too large\n", "text/plain")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _unauthenticated(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/api/") or path == "/metrics":
            await _respond(
                send,
                401,
                b'{"error": "login required"}\n',
                "application/json",
                # Scripts: `lanalyze web token create --user NAME`, then send the token so.
                [(b"www-authenticate", b'Bearer realm="lanalyze"')],
            )
            return
        target = path + (
            "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
        )
        location = "/login?next=" + quote(target, safe="")
        await _respond(send, 303, b"", "text/plain", [(b"location", location.encode())])

    async def _check_csrf(
        self, scope: Scope, receive: Receive, send: Send, expected: str
    ) -> tuple[bool, Receive]:
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        cross_origin = origin not in (None, "null") and host is not None
        if cross_origin and str(origin).split("://", 1)[-1] != host:
            REJECTED.labels("origin").inc()
            await _respond(send, 403, b"cross-origin request refused\n", "text/plain")
            return False, receive
        # Every body is read (bounded) before anything parses it, whether or not the token
        # came in a header: the handler behind us (the login form) parses what we replay.
        body = await _read_body(receive, MAX_FORM_BODY)
        if body is None:
            REJECTED.labels("too_large").inc()
            await _respond(send, 413, b"request body too large\n", "text/plain")
            return False, receive
        receive = _replay(body, receive)
        token = _header(scope, b"x-csrf-token")
        if token is None:
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip()
            if content_type == "application/x-www-form-urlencoded":
                fields = parse_qs(body.decode("utf-8", "replace"))
                token = fields["csrf"][0] if fields.get("csrf") else None
        if not expected or token is None or not same_token(token, expected):
            REJECTED.labels("csrf").inc()
            await _respond(
                send, 403, b"missing or wrong CSRF token: reload the page and retry\n", "text/plain"
            )
            return False, receive
        return True, receive


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of a client's token with ours.

    ``hmac.compare_digest`` raises ``TypeError`` on a ``str`` with non-ASCII characters, which
    a header (decoded as latin-1) or a form field may carry: compare UTF-8 bytes instead.
    """
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, original: Receive) -> Receive:
    """Hands the buffered body to the app once, then the connection's own events: a handler
    that waits for the client's disconnect must not be told of one that has not happened."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    raw: list[Any] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
