"""The console's read side of the mail pipeline: search the message index, find a message's
bytes, summarise the queue, and the two queue actions (retry, delete).

The mail server owns the index (:mod:`lanalyze.mail.index`, SQLite in WAL mode); every query
here goes through that module's read API (search with filters and paging, counts over time,
one message, rejections), opened read-only per call, so the schema lives in one module and
every value the user typed stays a parameter. The queue and Maildir layout are
:mod:`lanalyze.mail.queuefile`'s. Queue actions use the queue's file protocol: *retry* moves
the file back to ``queue/active/`` (the queue manager's scanner picks it up), *delete* removes
it and marks the index row ``deleted``.

Trust: index rows and messages are the peers' data (addresses, subjects, bodies): they are
only ever rendered escaped, and a message is parsed with the standard library's ``email``
package, which never raises on malformed input with the default policy.
"""

from __future__ import annotations

import contextlib
import email
import email.header
import email.policy
import email.utils
import os
import re
import sqlite3
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from lanalyze.mail.index import (
    COUNT_SERIES,
    VERDICTS,
    MessageIndex,
    MessageQuery,
    Page,
    RejectionQuery,
    is_forged,
)
from lanalyze.mail.queuefile import CorruptQueueFile, Layout, read_envelope, read_message

__all__ = ["VERDICTS", "MailQuery", "MailStore", "RejectionQuery", "SearchResult", "is_forged"]

PAGE_SIZE = 50
RAW_LIMIT = 2 * 1024 * 1024
HEADER_PEEK = 16 * 1024
QUEUE_STATUSES = ("queued", "deferred", "hold")
COUNT_COLOURS = {"accepted": "#1f77b4", "rejected": "#7f7f7f", "forged": "#d62728"}
_QUEUE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")

# The console's names for the index's query and page types.
MailQuery = MessageQuery
SearchResult = Page


@dataclass
class Part:
    content_type: str
    filename: str
    size: int
    text: str = ""
    is_attachment: bool = False


@dataclass
class ParsedMessage:
    headers: list[tuple[str, str]]
    text_parts: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    attachments: list[Part] = field(default_factory=list)
    header_from: list[str] = field(default_factory=list)
    header_to: list[str] = field(default_factory=list)


class MailStore:
    def __init__(self, data_dir: Path) -> None:
        self.layout = Layout(data_dir)

    # --- the index -------------------------------------------------------------------------

    def _index(self) -> MessageIndex | None:
        return MessageIndex.open_readonly(self.layout.index)

    def search(self, query: MailQuery) -> SearchResult:
        index = self._index()
        if index is None:
            return Page([], 0, 1, 1)
        with index:
            return index.search(query)

    def rejections(self, query: RejectionQuery) -> Page:
        index = self._index()
        if index is None:
            return Page([], 0, 1, 1)
        with index:
            return index.rejections(query)

    def rejection_summary(
        self, since: float | None, until: float | None
    ) -> dict[str, list[dict[str, Any]]]:
        index = self._index()
        if index is None:
            return {"reasons": [], "clients": []}
        with index:
            return index.rejection_summary(since, until)

    def rejection_reasons(self) -> list[str]:
        index = self._index()
        if index is None:
            return []
        with index:
            return index.rejection_reasons()

    def get(self, queue_id: str) -> dict[str, Any] | None:
        if not _QUEUE_ID.match(queue_id):
            return None
        index = self._index()
        if index is None:
            return None
        with index:
            try:
                return index.get(queue_id)
            except sqlite3.Error:
                return None

    def queue(self) -> list[dict[str, Any]]:
        """Messages waiting in the queue: index rows, completed from the queue files."""
        found: dict[str, dict[str, Any]] = {}
        listing: list[tuple[str, str, str]] = []
        for status, directory in (("queued", "active"), ("deferred", "deferred"), ("hold", "hold")):
            try:
                names = os.listdir(self.layout.q(directory))
            except FileNotFoundError:
                continue
            listing += [(status, directory, n) for n in names if _QUEUE_ID.match(n)]
        known: dict[str, dict[str, Any]] = {}
        index = self._index()
        if index is not None:
            with index, contextlib.suppress(sqlite3.Error):
                known = index.get_many([name for _, _, name in listing])
        for status, directory, name in listing:
            row = known.get(name) or {"queue_id": name}
            try:
                envelope, _ = read_envelope(self.layout.q(directory) / name)
            except (OSError, CorruptQueueFile):
                envelope = None
            if envelope is not None:
                row.update(
                    mail_from=envelope.mail_from,
                    recipients=envelope.recipients,
                    received_at=envelope.received_at,
                    attempts=envelope.attempts,
                    last_error=envelope.last_error,
                    size=envelope.size or row.get("size", 0),
                    subject=row.get("subject") or envelope.subject,
                )
            row["status"] = status
            found[name] = row
        return sorted(found.values(), key=lambda r: r.get("received_at", 0), reverse=True)

    def counts(self, since: float, until: float, bucket: int) -> dict[str, Any]:
        """Accepted, rejected and forged per bucket of ``bucket`` seconds, as chart data."""
        start = since - since % bucket
        times = [
            int((start + i * bucket) * 1000) for i in range(int(-(-(until - start) // bucket)))
        ]
        series: dict[str, list[int]] = {name: [0] * len(times) for name in COUNT_SERIES}
        index = self._index()
        if index is not None:
            with index:
                series = index.counts(since, until, bucket)
        return {
            "times": times,
            "since": int(start * 1000),
            "until": int(until * 1000),
            "bucket_ms": bucket * 1000,
            "unit": "",
            "integer": True,
            "stacked": False,
            "series": [
                {"name": name, "values": [float(v) for v in values], "colour": COUNT_COLOURS[name]}
                for name, values in series.items()
            ],
        }

    # --- message bytes ------------------------------------------------------------------------

    def raw(self, queue_id: str) -> bytes | None:
        """The message as stored: the queue file while queued, else its Maildir copy."""
        if not _QUEUE_ID.match(queue_id):
            return None
        path = self.layout.find(queue_id)
        if path is not None:
            try:
                envelope, length = read_envelope(path)
                body = read_message(path, min(length, RAW_LIMIT))
            except (OSError, CorruptQueueFile):
                return None
            return envelope.prepend.encode("utf-8", "surrogateescape") + body
        found = self._maildir_file(queue_id)
        if found is None:
            return None
        with found.open("rb") as handle:
            return handle.read(RAW_LIMIT).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def _maildir_file(self, queue_id: str) -> Path | None:
        """Delivered copies carry our Received line with ``id <queue id>`` in their header."""
        marker = f" id {queue_id}".encode()
        root = self.layout.maildirs
        if not root.is_dir():
            return None
        for directory, _subdirs, files in os.walk(root):
            if os.path.basename(directory) not in ("new", "cur"):
                continue
            for name in files:
                path = Path(directory) / name
                try:
                    with path.open("rb") as handle:
                        head = handle.read(HEADER_PEEK)
                except OSError:
                    continue
                end = head.find(b"\n\n")
                if marker in (head if end < 0 else head[:end]):
                    return path
        return None

    # --- queue actions ------------------------------------------------------------------------

    def retry(self, queue_id: str) -> bool:
        if not _QUEUE_ID.match(queue_id):
            return False
        for directory in ("deferred", "hold"):
            source = self.layout.q(directory) / queue_id
            if source.exists():
                try:
                    os.replace(source, self.layout.q("active") / queue_id)
                except OSError:
                    return False
                return True
        return False

    def delete(self, queue_id: str) -> bool:
        if not _QUEUE_ID.match(queue_id):
            return False
        path = self.layout.find(queue_id)
        if path is None or path.parent.name == "corrupt":
            return False
        try:
            path.unlink()
        except OSError:
            return False
        with contextlib.suppress(sqlite3.Error), MessageIndex(self.layout.index) as index:
            index.mark_deleted(queue_id)
        return True


def parse_message(raw: bytes) -> ParsedMessage:
    """Headers, text and HTML parts and attachments of a message, for display.

    The standard library's parser does not raise on malformed messages, but its header
    objects can raise when read (a group where an address was expected, broken encoded
    words), so headers are taken raw and decoded here, and every part is read on its own: a
    part that cannot be read is listed as such, never an error for the page.
    """
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = [(str(name), _decoded(value)) for name, value in message.items()]
    parsed = ParsedMessage(headers)
    parsed.header_from = _addresses(message.get_all("From", []))
    parsed.header_to = _addresses([*message.get_all("To", []), *message.get_all("Cc", [])])
    for part in message.walk():
        try:
            _add_part(parsed, part)
        except Exception:  # the peer's malformed part: list it, go on
            parsed.attachments.append(Part("application/octet-stream", "(unreadable part)", 0))
    return parsed


def _add_part(parsed: ParsedMessage, part: Message) -> None:
    if part.is_multipart():
        return
    content_type = part.get_content_type()
    filename = _decoded(part.get_filename() or "")
    disposition = part.get_content_disposition()
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    if disposition == "attachment" or filename or not content_type.startswith("text/"):
        parsed.attachments.append(Part(content_type, filename or "(unnamed)", len(data), "", True))
        return
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if content_type == "text/html":
        parsed.html_parts.append(text)
    else:
        parsed.text_parts.append(text)


def _addresses(values: list[Any]) -> list[str]:
    try:
        pairs = email.utils.getaddresses([str(v) for v in values])
    except Exception:  # malformed address lists are the peer's
        return []
    return [address for _, address in pairs if address]


def _decoded(value: Any) -> str:
    """RFC 2047 encoded words decoded; undecodable text shown as it came."""
    text = str(value)
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # broken encoded words: show them raw
        return text
