"""The few facts the checks read from a message's header block (RFC 5322 §2.2, §3.6.2).

Hand-written because the checks need raw, lossless access to untrusted header bytes: the
fields in order, exactly as received (to remove some and keep every other byte), and the
From: field even when the block is malformed, where ``email.parser`` repairs and reorders and
dkimpy's parser raises. Addresses inside From: are parsed by ``email.utils.getaddresses``.

Trust: everything here is the peer's and may be malformed; nothing raises on bad input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import getaddresses

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its line ends, body); the empty line belongs to neither."""
    if message.startswith((b"\r\n", b"\n")):
        return b"", message[2 if message.startswith(b"\r\n") else 1 :]
    # The leftmost match of _END_OF_HEADER, found with bytes.find: the regular expression
    # tried every line end of the body in Python's regex engine (~50 µs a 4 KiB message,
    # and the checks split each message several times).
    ends = [i for i in (message.find(b"\n\n"), message.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return message, b""
    first = min(ends)  # the first line feed of the empty line's pair
    start = first - 1 if first > 0 and message[first - 1] == 0x0D else first
    end = first + (2 if message[first + 1] == 0x0A else 3)
    end_of_last_line = start + (2 if message[start] == 0x0D else 1)
    return message[:end_of_last_line], message[end:]


def header_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """Fields as (lower-case name, raw bytes including continuation lines and line ends).

    A line that is neither a field nor a continuation is kept with the name ``b""``, so that
    joining the raw parts always gives back the exact input.
    """
    names: list[bytes] = []
    parts: list[list[bytes]] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and parts:
            # Collected as a list: joining at the end keeps thousands of continuation lines
            # (a hostile header) linear instead of quadratic.
            parts[-1].append(line)
            continue
        match = _FIELD_NAME.match(line)
        names.append(match.group(1).lower() if match else b"")
        parts.append([line])
    return [(name, b"".join(lines)) for name, lines in zip(names, parts, strict=True)]


MAX_FOLDING_COST = 50_000_000
MAX_FROM_FIELD = 16_384


def folding_cost(fields: list[tuple[bytes, bytes]]) -> int:
    """Bytes dkimpy's header parser would copy for these fields.

    dkimpy grows a folded field by concatenating one line at a time, so a field of ``n`` lines
    and ``b`` bytes costs about ``n * b``: a 2 MB field folded 40,000 times takes seconds of
    CPU, 10 MB minutes. Real mail costs a few kilobytes; above :data:`MAX_FOLDING_COST`
    (about 50 ms of copying) the message is not handed to dkimpy at all.
    """
    return sum(raw.count(b"\n") * len(raw) for _, raw in fields)


def field_value(raw: bytes) -> str:
    """A field's value, unfolded, decoded leniently (RFC 6532 allows UTF-8)."""
    _, _, value = raw.partition(b":")
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")
    return unfolded.decode("utf-8", "replace").strip()


def normalise_domain(domain: str) -> str | None:
    """A syntactically plausible lower-case domain name, or None."""
    text = domain.strip().strip("[]").rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return None
    return text if _DOMAIN.match(text) else None


def domain_of(address: str) -> str | None:
    if "@" not in address:
        return None
    return normalise_domain(address.rpartition("@")[2])


def decoded_display_name(name: str) -> str:
    try:
        return str(make_header(decode_header(name)))
    except (ValueError, LookupError, UnicodeError):
        return name


@dataclass
class FromInfo:
    """What the From: fields say. ``fields`` counts From: fields; ``addresses`` all mailboxes."""

    fields: int = 0
    addresses: list[tuple[str, str]] = field(default_factory=list)

    # Worked out once (the checks read them a dozen times a message), so read them only
    # once ``addresses`` is complete, as from_info returns it.
    @functools.cached_property
    def domains(self) -> list[str]:
        found = [domain_of(address) for _, address in self.addresses]
        return list(dict.fromkeys(d for d in found if d))

    @functools.cached_property
    def display_names(self) -> list[str]:
        return [decoded_display_name(name) for name, _ in self.addresses if name]


# (header block, body, header fields) of one message, parsed once for all the checks.
Parsed = tuple[bytes, bytes, list[tuple[bytes, bytes]]]


def parse_message(message: bytes) -> Parsed:
    header, body = split_message(message)
    return header, body, header_fields(header)


def from_info(header: bytes, fields: list[tuple[bytes, bytes]] | None = None) -> FromInfo:
    """The From: fields of ``header`` (``fields``: its fields, when parsed already)."""
    info = FromInfo()
    for name, raw in header_fields(header) if fields is None else fields:
        if name != b"from":
            continue
        info.fields += 1
        # email.utils' address parser is slow on huge input; no honest From: is this long.
        value = field_value(raw[:MAX_FROM_FIELD])
        for display, address in getaddresses([value]):
            if address or display:
                info.addresses.append((display, address))
    return info


@dataclass
class SenderFields:
    """Who a message's header says sent it: every From: and Sender: field of the whole header
    block (RFC 5322 §3.6.2), for binding a submission user to their addresses."""

    from_fields: int = 0
    from_addresses: list[str] = field(default_factory=list)
    sender_addresses: list[str] = field(default_factory=list)
    oversized: bool = False  # a From:/Sender: field over MAX_FROM_FIELD (not parsed)


def sender_fields(header: bytes) -> SenderFields:
    """Every address of every From: and Sender: field; none skipped, none truncated.

    An entry without an address part is kept as written (``ceo`` in ``From: ceo``), so a
    caller comparing addresses refuses what it cannot attribute. A field too long to parse
    cheaply is reported as ``oversized`` instead of being cut short, where an address could
    hide past the cut.
    """
    info = SenderFields()
    for name, raw in header_fields(header):
        if name not in (b"from", b"sender"):
            continue
        if name == b"from":
            info.from_fields += 1
        if len(raw) > MAX_FROM_FIELD:
            info.oversized = True
            continue
        found = info.from_addresses if name == b"from" else info.sender_addresses
        for display, address in getaddresses([field_value(raw)]):
            if address or display:
                found.append(address or display)
    return info
