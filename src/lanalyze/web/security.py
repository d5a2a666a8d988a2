"""Response headers that keep the console safe to expose (CSP, framing, sniffing, caching),
and who the client is behind a reverse proxy.

The Content-Security-Policy allows only our own scripts, styles and images (no inline script,
no ``eval``, no remote origin), so an injected string can at worst be text. Charts are exported
to PNG through ``blob:``/``data:`` images, hence those two image sources. A handler may set its
own, stricter or page-specific, ``Content-Security-Policy``; this middleware then leaves it.

The client address (used by the login limits and the ``/metrics`` network check) is the TCP
peer, unless the peer is in ``web.trusted_proxies``: then ``X-Forwarded-For`` (the de-facto
header; RFC 7239 ``Forwarded`` is not read) is walked from the right, past trusted proxies, to
the first address none of them is: everything left of it was written by the client and is not
trusted. A malformed entry stops the walk at the last proxy, and is counted and logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from prometheus_client import Counter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lanalyze.log import RateLimiter, get_logger
from lanalyze.metrics import REGISTRY

log = get_logger(__name__)
_bad_forwarded_log = RateLimiter(interval=60, burst=5)
BAD_FORWARDED = Counter(
    "lanalyze_web_forwarded_invalid_total",
    "X-Forwarded-For entries from a trusted proxy that are not an IP address.",
    registry=REGISTRY,
)
# Hops considered from the right: a proxy chain is short, a client may send thousands.
MAX_FORWARDED_HOPS = 32
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; frame-src 'self'"
)

# The message view embeds the mail's HTML in a sandboxed srcdoc iframe, which inherits this
# page's policy: remote content stays blocked, the mail's own inline styles are allowed.
MESSAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; frame-src 'self'"
)

BASE_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in BASE_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("content-security-policy", CSP)
                if not static:
                    headers.setdefault("cache-control", "no-store")
                if self.tls:
                    headers.setdefault("strict-transport-security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class ClientAddressMiddleware:
    """Replaces ``scope["client"]`` with the forwarded client when the peer is a trusted proxy."""

    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[str]) -> None:
        self.app = app
        self.trusted: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        ]

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.trusted and scope.get("client"):
            client = self._forwarded_client(scope)
            if client is not None:
                scope["client"] = (client, 0)
        await self.app(scope, receive, send)

    def _forwarded_client(self, scope: Scope) -> str | None:
        peer_text = str(scope["client"][0])
        peer = _parse_ip(peer_text)
        if peer is None or not self._is_trusted(peer):
            return None
        entries: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                entries.extend(value.decode("latin-1").split(","))
        client: str | None = None
        for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
            address = _parse_ip(entry)
            if address is None:
                BAD_FORWARDED.inc()
                if _bad_forwarded_log.allow(peer_text) is not None:
                    log.warning(
                        "web.forwarded_invalid", extra={"peer": peer_text, "entry": entry[:64]}
                    )
                break
            client = str(address)
            if not self._is_trusted(address):
                break
        return client
