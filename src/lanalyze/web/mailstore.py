"""The console's read side of the mail pipeline: search the message index, find a message's
bytes, summarise the queue, and the queue actions (retry, hold, release, delete).

The mail server owns the index (:mod:`lanalyze.mail.index`, SQLite in WAL mode); every query
here goes through that module's read API (search with filters and paging, counts over time,
one message, rejections), opened read-only per call, so the schema lives in one module and
every value the user typed stays a parameter. The queue and Maildir layout are
:mod:`lanalyze.mail.queuefile`'s. Queue listing and actions are
:class:`~lanalyze.mail.queueadmin.QueueAdmin`'s, the same as ``lanalyze mail queue``'s (one
queue-id rule, one index update; its docstring has the rules). A delivered message's bytes
are read from the Maildir files the index recorded for it
(:func:`~lanalyze.mail.delivery.maildir.find_delivered`): exactly that message's, never one
found by searching message text.

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
import sqlite3
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from lanalyze.mail.delivery.maildir import find_delivered
from lanalyze.mail.errors import CorruptQueueFile
from lanalyze.mail.index import COUNT_SERIES, MessageIndex, MessageQuery, Page, RejectionQuery
from lanalyze.mail.queueadmin import (
    QueueAdmin,
    QueueEntry,
    Report,
    destinations,
    for_destination,
    recipient_states,
)
from lanalyze.mail.queuefile import Layout, read_envelope, read_message, valid_queue_id

PAGE_SIZE = 50
RAW_LIMIT = 2 * 1024 * 1024
COUNT_COLOURS = {"accepted": "#1f77b4", "rejected": "#7f7f7f", "forged": "#d62728"}


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
        self.admin = QueueAdmin(self.layout)

    # --- the index -------------------------------------------------------------------------

    def _index(self) -> MessageIndex | None:
        return MessageIndex.open_readonly(self.layout.index)

    def search(self, query: MessageQuery) -> Page:
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
        if not valid_queue_id(queue_id):
            return None
        index = self._index()
        if index is None:
            return None
        with index:
            try:
                return index.get(queue_id)
            except sqlite3.Error:
                return None

    def queue(self, listing: list[QueueEntry] | None = None) -> list[dict[str, Any]]:
        """Messages in the queue (corrupt ones too, with no actions): index rows, completed
        from the queue files, with each recipient's state (``rcpt``)."""
        if listing is None:
            listing = self.admin.entries()
        known: dict[str, dict[str, Any]] = {}
        index = self._index()
        if index is not None:
            with index, contextlib.suppress(sqlite3.Error):
                known = index.get_many([entry.queue_id for entry in listing])
        rows = []
        for entry in listing:
            row = known.get(entry.queue_id) or {"queue_id": entry.queue_id}
            envelope = entry.envelope
            if envelope is not None:
                row.update(
                    mail_from=envelope.mail_from,
                    recipients=envelope.recipients,
                    received_at=envelope.received_at,
                    attempts=envelope.attempts,
                    last_error=envelope.last_error,
                    size=envelope.size or row.get("size", 0),
                    subject=row.get("subject") or envelope.subject,
                    rcpt=[r.as_dict() for r in recipient_states(envelope)],
                )
            else:
                row["last_error"] = entry.error
            row["status"] = entry.status
            rows.append(row)
        return sorted(rows, key=lambda r: r.get("received_at", 0), reverse=True)

    def queue_and_destinations(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:meth:`queue` and the per-destination status, from one reading of the queue."""
        listing = self.admin.entries()
        return self.queue(listing), [d.as_dict() for d in destinations(listing)]

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
        """The message as stored: the queue file while queued, else its delivered copy."""
        if not valid_queue_id(queue_id):
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
        try:
            with found.open("rb") as handle:
                data = handle.read(RAW_LIMIT)
        except OSError:  # the mail reader moved or expunged it meanwhile
            return None
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def _maildir_file(self, queue_id: str) -> Path | None:
        """The first delivered copy the index recorded for this message that still exists
        (new/ or, once a mail reader has seen it, cur/)."""
        index = self._index()
        if index is None:
            return None
        with index:
            try:
                files = index.delivered_files(queue_id)
            except sqlite3.Error:
                return None
        for relative in files:
            found = find_delivered(self.layout.maildirs, relative)
            if found is not None:
                return found
        return None

    # --- queue actions ------------------------------------------------------------------------

    def queue_action(self, action: str, queue_id: str) -> Report:
        """``retry`` (requeue), ``flush``, ``hold``, ``release`` or ``delete`` one message;
        the console never deletes corrupt files (they are kept for the administrator)."""
        run = {
            "retry": self.admin.requeue,
            "flush": self.admin.flush,
            "hold": self.admin.hold,
            "release": self.admin.release,
            "delete": self.admin.delete,
        }[action]
        return run([queue_id])

    def destination_action(self, action: str, domain: str) -> Report:
        """``flush``, ``hold``, ``release`` or ``delete`` every message with a recipient
        still to deliver in ``domain`` (the queues each action takes from)."""
        queues = {
            "flush": ("deferred",),
            "hold": ("active", "deferred"),
            "release": ("hold",),
            "delete": ("active", "deferred", "hold"),
        }[action]
        ids = self.admin.select(queues, for_destination(domain))
        run = {
            "flush": self.admin.flush,
            "hold": self.admin.hold,
            "release": self.admin.release,
            "delete": self.admin.delete,
        }[action]
        return run(ids)


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
