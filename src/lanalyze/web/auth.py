"""Who may use the console: password check, signed session cookies, CSRF, login rate limit.

Trust: every request is hostile until its session cookie verifies. Passwords are checked
against argon2 hashes from the config (argon2-cffi); unknown users cost the same work as known
ones so timing does not reveal which names exist. Sessions are stateless cookies signed with
itsdangerous (HMAC over a key kept in a 0600 file), carrying the user, a CSRF token and a
fingerprint of the password hash, so changing a password in the config ends that user's
sessions. State-changing requests must carry the session's CSRF token (synchronizer token:
form field ``csrf`` or header ``X-CSRF-Token``) and, when the browser sends one, a same-origin
``Origin``. The login form, having no session yet, uses a double-submit cookie.

The middleware is plain ASGI (not ``BaseHTTPMiddleware``) so it can buffer a small form body to
read the CSRF field and replay it to the handler.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lanalyze import throttle
from lanalyze.metrics import REGISTRY
from lanalyze.web.config import WebConfig, WebUser

LOGINS = Counter(
    "lanalyze_web_logins_total",
    "Console login attempts by result (ok, failed, limited).",
    ["result"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "lanalyze_web_rejected_requests_total",
    "Requests refused by the console's guard, by reason (csrf, origin, too_large).",
    ["reason"],
    registry=REGISTRY,
)

LoginLimiter = throttle.LoginLimiter  # the one failed-attempt limiter (SMTP AUTH uses it too)
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


class SessionCodec:
    """Session <-> signed cookie value."""

    def __init__(self, secret: bytes, lifetime: int, users: Users) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="lanalyze.session")
        self.lifetime = lifetime
        self._users = users

    def issue(self, user: WebUser) -> tuple[str, Session]:
        session = Session(user.name, secrets.token_urlsafe(24))
        value = self._serializer.dumps({"u": user.name, "c": session.csrf, "h": _fingerprint(user)})
        return value, session

    def read(self, value: str) -> Session | None:
        try:
            data = self._serializer.loads(value, max_age=self.lifetime)
        except (BadSignature, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        user = self._users.get(str(data.get("u", "")))
        if user is None or not hmac.compare_digest(str(data.get("h", "")), _fingerprint(user)):
            return None
        return Session(user.name, str(data.get("c", "")))


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
    """Requires a session for everything but the login page, static files and health.

    Sets ``scope["state"]["session"]`` (a :class:`Session` or ``None``). Pages without a
    session redirect to ``/login``; ``/api/`` answers 401 JSON. ``/metrics`` is open to the
    configured networks only.
    """

    PUBLIC_PREFIXES = ("/static/", "/login", "/healthz")

    def __init__(self, app: ASGIApp, config: WebConfig, codec: SessionCodec) -> None:
        self.app = app
        self.codec = codec
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
        path: str = scope["path"]
        cookies = _cookies(scope)
        session = None
        if self.session_cookie in cookies:
            session = self.codec.read(cookies[self.session_cookie])
        scope.setdefault("state", {})["session"] = session
        public = path.startswith(self.PUBLIC_PREFIXES) or (
            path == "/metrics" and self._metrics_open(scope)
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

    async def _unauthenticated(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/api/") or path == "/metrics":
            await _respond(send, 401, b'{"error": "login required"}\n', "application/json")
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
        token = _header(scope, b"x-csrf-token")
        if token is None:
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip()
            if content_type == "application/x-www-form-urlencoded":
                body = await _read_body(receive, MAX_FORM_BODY)
                if body is None:
                    REJECTED.labels("too_large").inc()
                    await _respond(send, 413, b"form too large\n", "text/plain")
                    return False, receive
                fields = parse_qs(body.decode("utf-8", "replace"))
                token = fields["csrf"][0] if fields.get("csrf") else None
                receive = _replay(body)
        if not expected or token is None or not hmac.compare_digest(token, expected):
            REJECTED.labels("csrf").inc()
            await _respond(
                send, 403, b"missing or wrong CSRF token: reload the page and retry\n", "text/plain"
            )
            return False, receive
        return True, receive


async def _read_body(receive: Receive, limit: int) -> bytes | None:
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


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

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
