"""A summary of a message's header (From, Subject, Message-ID) for the index and policy.

Reads only the header block at the start of the first bytes of the message (RFC 5322 §2.2,
unfolding per §2.2.3; RFC 2047 encoded words decoded for display). The message itself is
never modified here. Trust: all bytes are the peer's; malformed headers give empty fields,
never an exception.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from dataclasses import dataclass

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_FIELD = 500


@dataclass
class HeaderSummary:
    header_from: str = ""
    raw_from: str = ""
    subject: str = ""
    message_id: str = ""

    @property
    def from_addresses(self) -> list[str]:
        """The addresses in From: (parsed only when needed: sender binding, signing)."""
        try:
            pairs = email.utils.getaddresses([self.raw_from]) if self.raw_from else []
        except (ValueError, IndexError):
            return []
        return [addr for _, addr in pairs if "@" in addr]


def sanitize(text: str, limit: int = MAX_FIELD) -> str:
    """Peer text made safe for one header line or log field: no control characters."""
    return _CONTROL.sub(" ", text)[:limit]


def _decode(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def header_summary(head: bytes) -> HeaderSummary:
    end = head.find(b"\r\n\r\n")
    block = head if end < 0 else head[: end + 2]
    wanted: dict[str, str] = {}
    name = ""
    for raw in block.split(b"\r\n"):
        if raw[:1] in (b" ", b"\t"):
            if name in wanted:
                wanted[name] += " " + raw.strip().decode("utf-8", "replace")
            continue
        key, colon, value = raw.partition(b":")
        name = key.strip().lower().decode("ascii", "replace") if colon else ""
        if name in ("from", "subject", "message-id") and name not in wanted:
            wanted[name] = value.strip().decode("utf-8", "replace")
    summary = HeaderSummary()
    raw_from = wanted.get("from", "")
    summary.header_from = sanitize(_decode(raw_from))
    summary.raw_from = raw_from
    summary.subject = sanitize(_decode(wanted.get("subject", "")))
    summary.message_id = sanitize(wanted.get("message-id", ""))
    return summary
