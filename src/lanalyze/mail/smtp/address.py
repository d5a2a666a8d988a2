"""Parsing of the path argument of MAIL FROM / RCPT TO and its ESMTP parameters.

RFC 5321 §4.1.2 (Path, Reverse-path, Forward-path, Mail-parameters), §3.3 and §4.1.1.11
(source routes are accepted and their route ignored), RFC 6531 (UTF-8 addresses).

Trust: the input is a command line from an unauthenticated peer. Parsing is lenient where
Postfix is lenient (no angle brackets, a space after the colon) and returns
:class:`AddressError` for everything else; nothing here raises anything else on bad bytes.
The relay-trick flags (``%``, ``!``, source route, quoted local part, IP literal) are
reported to the policy, which decides; parsing never decides who may relay.

Hand-written because aiosmtpd's helpers (``get_addr_spec`` via the ``email`` header parser)
accept header syntax (comments, folding) that is not SMTP syntax and give no relay flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lanalyze.mail.errors import AddressError

MAX_PATH = 512


@dataclass(frozen=True, slots=True)
class Path:
    address: str  # mailbox without angle brackets and without a source route; "" = null path
    local: str
    domain: str
    source_route: bool = False
    quoted_local: bool = False

    @property
    def ip_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def relay_tricks(self) -> bool:
        """Local-part routing syntax that old MTAs interpreted as "relay onwards"."""
        return (
            self.source_route
            or self.quoted_local
            or self.ip_literal
            or "%" in self.local
            or "!" in self.local
        )


def split_path(text: str) -> tuple[str, str]:
    """``<a@b> SIZE=1`` or ``a@b SIZE=1`` -> (``a@b``, ``SIZE=1``); quotes may hold ``>``."""
    text = text.lstrip(" ")
    if text.startswith("<"):
        close = text.find(">")
        if close > 0 and '"' not in text[:close] and "\\" not in text[:close]:
            # The common case: no quote or escape before the first ">", which the scan below
            # would stop at too.
            return text[1:close], text[close + 1 :].strip(" ")
        in_quote = False
        escaped = False
        for index in range(1, len(text)):
            char = text[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quote = not in_quote
            elif char == ">" and not in_quote:
                return text[1:index], text[index + 1 :].strip(" ")
        raise AddressError("unbalanced angle brackets")
    path, _, rest = text.partition(" ")
    return path, rest.strip(" ")


def parse_path(raw: str, *, allow_null: bool) -> Path:
    if len(raw) > MAX_PATH:
        raise AddressError("address too long")
    if raw == "":
        if allow_null:
            return Path("", "", "")
        raise AddressError("null address not allowed here")
    if not raw.isprintable():  # control characters, and surrogate-escaped non-UTF-8 bytes
        raise AddressError("control character or invalid UTF-8 in address")
    source_route = False
    if raw.startswith("@"):
        # RFC 5321 §4.1.1.11 / Appendix C: "@a,@b:user@c"; servers SHOULD ignore the route.
        _route, colon, mailbox = raw.partition(":")
        if not colon or not mailbox:
            raise AddressError("bad source route")
        source_route = True
        raw = mailbox
    quoted = raw.startswith('"')
    if quoted:
        end = _closing_quote(raw)
        local, rest = raw[: end + 1], raw[end + 1 :]
        if not rest.startswith("@"):
            if rest:
                raise AddressError("text after quoted local part")
            return Path(raw, local, "", source_route, True)
        domain = rest[1:]
    else:
        if " " in raw:
            raise AddressError("space in address")
        local, at, domain = raw.rpartition("@")
        if not at:
            local, domain = raw, ""
    if at_domain_missing(domain, raw):
        raise AddressError("empty domain")
    if not local:
        raise AddressError("empty local part")
    if domain and not _domain_ok(domain):
        raise AddressError("bad domain")
    return Path(
        f"{local}@{domain}" if domain else local, local, domain.lower(), source_route, quoted
    )


def at_domain_missing(domain: str, raw: str) -> bool:
    return raw.endswith("@") and not domain


def _closing_quote(raw: str) -> int:
    escaped = False
    for index in range(1, len(raw)):
        char = raw[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index
    raise AddressError("unbalanced quotes")


_DOMAIN = re.compile(r"[\w.-]+")  # \w: letters and digits of any script (RFC 6531), "_"


def _domain_ok(domain: str) -> bool:
    if domain.startswith("["):
        return domain.endswith("]") and len(domain) > 2
    if len(domain) > 255 or ".." in domain or domain.startswith(".") or domain.endswith("."):
        return False
    return _DOMAIN.fullmatch(domain) is not None


def parse_params(text: str) -> dict[str, str]:
    """``SIZE=123 BODY=8BITMIME SMTPUTF8`` -> upper-cased keys; a bare keyword maps to ""."""
    params: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not key or not all(c.isalnum() or c == "-" for c in key):
            raise AddressError(f"bad parameter {item[:40]!r}")
        params[key.upper()] = value
    return params
