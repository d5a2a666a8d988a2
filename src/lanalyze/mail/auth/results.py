"""The ``Authentication-Results`` header field (RFC 8601): rendering ours, removing forgeries.

Rendering is hand-written because authres (the library authheaders uses) writes property
values such as ``smtp.mailfrom`` unquoted even when they are not a valid ``pvalue``, and does
not fold; every value here comes from the peer (MAIL FROM, d=, From: domains), so it is
quoted as RFC 8601 §2.2 requires, control characters are dropped (no header injection), and
each result goes on its own folded line (RFC 5322 §2.2.3) well under 998 octets.

§5 requires removing incoming fields that claim our authserv-id before adding ours. Only the
authserv-id at the start of the value is parsed (CFWS and nested comments allowed, token or
quoted-string), so a field that claims our id is removed even if the rest is malformed.

Trust: all input is the peer's; nothing here raises on bad bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lanalyze.mail.auth.message import field_value, header_fields, split_message

HEADER_NAME = "Authentication-Results"
MAX_VALUE = 256
MAX_COMMENT = 200
FOLD_AT = 78

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATEXT_DOT_ATOM = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$"
)
_DOMAIN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _clean(text: str, limit: int) -> str:
    """Printable ASCII only: older readers of the field choke on UTF-8 (RFC 6532)."""
    local, at, domain = text.rpartition("@")
    if at and not domain.isascii():
        text = f"{local}@{_ascii_domain(domain)}"
    elif not at and not text.isascii():
        text = _ascii_domain(text)
    if not text.isascii():  # most text is: no walk over its characters then
        text = "".join(c if c.isascii() else "?" for c in text)
    return _CONTROL.sub("", text)[:limit]


def _is_token(text: str) -> bool:
    # Every character in 33-126 (printable ASCII but the space), none a tspecial.
    return (
        bool(text)
        and text.isascii()
        and text.isprintable()
        and " " not in text
        and _TSPECIALS.isdisjoint(text)
    )


def quote_value(text: str) -> str:
    """RFC 8601 ``value``: a token when possible, else a quoted-string."""
    text = _clean(text, MAX_VALUE)
    if _is_token(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_pvalue(text: str) -> str:
    """RFC 8601 ``pvalue``: an addr-spec or domain as is when it is one, else quoted."""
    text = _clean(text, MAX_VALUE)
    local, at, domain = text.rpartition("@")
    if at and _DOMAIN.match(domain) and (not local or _ATEXT_DOT_ATOM.match(local)):
        return text
    if not at and _DOMAIN.match(text):
        return text
    return quote_value(text)


def comment(text: str) -> str:
    # A ";" inside a comment is legal, but naive readers split resinfos on it.
    # Brackets for parentheses: unbalanced ones would end the comment early.
    text = _clean(text, MAX_COMMENT).replace(";", ",").replace("(", "[").replace(")", "]")
    return "(" + text.replace("\\", "\\\\") + ")"


@dataclass
class ResInfo:
    method: str  # spf dkim dmarc arc auth
    result: str
    comment: str = ""
    properties: list[tuple[str, str]] = field(default_factory=list)  # ("smtp.mailfrom", value)

    def parts(self) -> list[str]:
        out = [f"{self.method}={self.result}"]
        if self.comment:
            out.append(comment(self.comment))
        for name, value in self.properties:
            out.append(f"{name}={quote_pvalue(value)}")
        return out


def _fold(parts: Sequence[str], indent: int) -> str:
    lines: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current} {part}" if current else part
        if current and indent + len(candidate) > FOLD_AT:
            lines.append(current)
            current = part
        else:
            current = candidate
    lines.append(current)
    return "\r\n\t ".join(lines)


def render(authserv_id: str, results: Iterable[ResInfo]) -> bytes:
    """The complete field, folded, ending in CRLF."""
    infos = list(results)
    head = f"{HEADER_NAME}: {quote_value(authserv_id) or 'localhost'};"
    if not infos:
        return (head + " none\r\n").encode()
    body = ";\r\n\t".join(_fold(info.parts(), 8) for info in infos)
    return (head + "\r\n\t" + body + "\r\n").encode("utf-8")


def _skip_cfws(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        char = text[pos]
        if depth:
            if char == "\\":
                pos += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        elif char == "(":
            depth = 1
        elif not char.isspace():
            return pos
        pos += 1
    return pos


def authserv_id_of(value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with (RFC 8601 §2.2)."""
    pos = _skip_cfws(value, 0)
    if pos >= len(value):
        return None
    if value[pos] == '"':
        out, pos = [], pos + 1
        while pos < len(value) and value[pos] != '"':
            if value[pos] == "\\" and pos + 1 < len(value):
                pos += 1
            out.append(value[pos])
            pos += 1
        return "".join(out)
    match = re.match(r"[^\s;()\"]+", value[pos:])
    return match.group(0) if match else None


def our_results_ranges(
    message: bytes, authserv_id: str, fields: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the header fields that claim ``authserv_id``
    (``fields``: the message's header fields, when parsed already)."""
    if fields is None:
        fields = header_fields(split_message(message)[0])
    ours = authserv_id.strip().lower()
    ranges = []
    offset = 0
    for name, raw in fields:
        if name == b"authentication-results":
            claimed = authserv_id_of(field_value(raw))
            if claimed is not None and claimed.strip().lower() == ours:
                ranges.append((offset, offset + len(raw)))
        offset += len(raw)
    return ranges


def strip_our_results(message: bytes, authserv_id: str) -> bytes:
    """Remove Authentication-Results fields that claim ``authserv_id``; keep all else as is."""
    ranges = our_results_ranges(message, authserv_id)
    if not ranges:
        return message
    parts, position = [], 0
    for start, end in ranges:
        parts.append(message[position:start])
        position = end
    parts.append(message[position:])
    return b"".join(parts)
