"""The RFC 3461 (SMTP DSN extension) parameters of MAIL and RCPT: parsing and xtext.

RFC 3461 §4.1 NOTIFY (``NEVER`` or a comma list of ``SUCCESS``, ``FAILURE``, ``DELAY``),
§4.2 ORCPT (``addr-type ";" xtext``, at most 500 characters), §4.3 RET (``FULL`` | ``HDRS``),
§4.4 ENVID (xtext, at most 100 characters), §4 xtext (``!``..``~`` except ``+`` and ``=``,
and ``+XX`` hex escapes). RFC 3464 §2.2.1 reports ENVID back as xtext: :func:`xtext_encode`.

Trust: every value is the unauthenticated peer's. Parsing raises :class:`AddressError`
(the core answers it with ``501 5.5.4``) and nothing else; a decoded value holding a control
character is refused, since ENVID and ORCPT are written back into a DSN's header fields.
Decoding is lenient on one point: lower-case hex digits after ``+`` are accepted.
"""

from __future__ import annotations

from typing import Any

from lanalyze.mail.errors import AddressError

MAX_ENVID = 100  # RFC 3461 §4.4, in xtext characters
MAX_ORCPT = 500  # RFC 3461 §4.2
NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_HEX = frozenset("0123456789ABCDEFabcdef")


def xtext_decode(text: str) -> bytes:
    """The octets an xtext stands for; :class:`AddressError` when it is not xtext."""
    out = bytearray()
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "+":
            pair = text[index + 1 : index + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise AddressError("bad xtext escape")
            out.append(int(pair, 16))
            index += 3
            continue
        code = ord(char)
        if code < 33 or code > 126 or char == "=":
            raise AddressError("bad xtext character")
        out.append(code)
        index += 1
    return bytes(out)


def xtext_encode(value: str) -> str:
    """``value`` (UTF-8) as xtext: ``+`` ``=``, controls, space and non-ASCII escaped."""
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _printable(raw: bytes, what: str, *, ascii_only: bool) -> str:
    try:
        text = raw.decode("ascii" if ascii_only else "utf-8")
    except UnicodeDecodeError:
        raise AddressError(f"{what} is not {'ASCII' if ascii_only else 'UTF-8'}") from None
    if not text.isprintable():
        raise AddressError(f"control character in {what}")
    return text


def parse_notify(value: str) -> list[str]:
    words = [word.upper() for word in value.split(",")]
    if words == ["NEVER"]:
        return words
    if not words or any(word not in NOTIFY_WORDS for word in words):
        raise AddressError("bad NOTIFY parameter")
    if len(set(words)) != len(words):
        raise AddressError("repeated NOTIFY keyword")
    return [word for word in ("SUCCESS", "FAILURE", "DELAY") if word in words]


def parse_orcpt(value: str) -> str:
    """``rfc822;a+2Bb@example.org`` -> ``rfc822;a+b@example.org`` (addr-type kept as given)."""
    if len(value) > MAX_ORCPT:
        raise AddressError("ORCPT too long")
    addr_type, semicolon, xtext = value.partition(";")
    if not semicolon or not addr_type or not xtext:
        raise AddressError("bad ORCPT parameter")
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in addr_type):
        raise AddressError("bad ORCPT address type")
    return f"{addr_type};{_printable(xtext_decode(xtext), 'ORCPT', ascii_only=False)}"


def parse_envid(value: str) -> str:
    if not value or len(value) > MAX_ENVID:
        raise AddressError("bad ENVID length")
    return _printable(xtext_decode(value), "ENVID", ascii_only=True)


def parse_ret(value: str) -> str:
    upper = value.upper()
    if upper not in ("FULL", "HDRS"):
        raise AddressError("bad RET parameter")
    return upper


def mail_dsn(params: dict[str, str]) -> tuple[str | None, str | None]:
    """(RET, ENVID decoded) of MAIL's parameters; either None when not given."""
    ret = parse_ret(params["RET"]) if "RET" in params else None
    envid = parse_envid(params["ENVID"]) if "ENVID" in params else None
    return ret, envid


def rcpt_dsn(params: dict[str, str]) -> dict[str, Any] | None:
    """``{"notify": [...], "orcpt": "type;address"}`` of RCPT's parameters (keys only when
    given), or None when neither was given."""
    found: dict[str, Any] = {}
    if "NOTIFY" in params:
        found["notify"] = parse_notify(params["NOTIFY"])
    if "ORCPT" in params:
        found["orcpt"] = parse_orcpt(params["ORCPT"])
    return found or None
