"""The console's read side of the mail pipeline: search the message index, find a message's
bytes, summarise the queue, and the two queue actions (retry, delete).

The mail server owns the index (:mod:`lanalyze.mail.index`, SQLite in WAL mode) and the queue
and Maildir layout (:mod:`lanalyze.mail.queuefile`). The index has no search yet, so the
searches here are our own SELECTs on it, opened read-only; every value the user typed is a
parameter (``LIKE`` patterns escaped), never SQL text. Queue actions use the queue's file
protocol: *retry* moves the file back to ``queue/active/`` (the queue manager's scanner picks
it up), *delete* removes it and marks the index row ``deleted``.

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
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from lanalyze.mail.queuefile import CorruptQueueFile, Layout, read_envelope, read_message

PAGE_SIZE = 50
RAW_LIMIT = 2 * 1024 * 1024
HEADER_PEEK = 16 * 1024
QUEUE_STATUSES = ("queued", "deferred", "hold")
VERDICTS = ("any", "pass", "fail", "forged", "none")
LOCAL_CLAIM_FLAG = "local_domain_claimed_from_outside"
COUNT_COLOURS = {"accepted": "#1f77b4", "rejected": "#7f7f7f", "forged": "#d62728"}
_QUEUE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


def is_forged(auth: dict[str, Any] | None) -> bool:
    """DMARC failed, or a message from outside claims one of our own domains."""
    if not auth:
        return False
    return auth.get("dmarc") == "fail" or LOCAL_CLAIM_FLAG in (auth.get("flags") or [])


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class MailQuery:
    sender: str = ""
    recipient: str = ""
    subject: str = ""
    verdict: str = "any"
    since: float | None = None
    until: float | None = None
    page: int = 1


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


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

    def _connect(self) -> sqlite3.Connection | None:
        if not self.layout.index.exists():
            return None
        db = sqlite3.connect(f"file:{self.layout.index}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        return db

    def search(self, query: MailQuery) -> SearchResult:
        db = self._connect()
        if db is None:
            return SearchResult([], 0, 1, 1)
        where: list[str] = []
        params: list[Any] = []
        if query.sender:
            where.append("(mail_from LIKE ? ESCAPE '\\' OR header_from LIKE ? ESCAPE '\\')")
            params += [_like(query.sender)] * 2
        if query.recipient:
            where.append("recipients LIKE ? ESCAPE '\\'")
            params.append(_like(query.recipient))
        if query.subject:
            where.append("subject LIKE ? ESCAPE '\\'")
            params.append(_like(query.subject))
        if query.since is not None:
            where.append("received_at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("received_at < ?")
            params.append(query.until)
        if query.verdict == "pass":
            where.append("json_extract(auth, '$.dmarc') = 'pass'")
        elif query.verdict == "fail":
            where.append(
                "(json_extract(auth, '$.dmarc') = 'fail' OR json_extract(auth, '$.spf') = 'fail'"
                " OR json_extract(auth, '$.dkim') = 'fail')"
            )
        elif query.verdict == "forged":
            where.append("(json_extract(auth, '$.dmarc') = 'fail' OR auth LIKE ?)")
            params.append(f'%"{LOCAL_CLAIM_FLAG}"%')
        elif query.verdict == "none":
            where.append("auth IS NULL")
        clause = " WHERE " + " AND ".join(where) if where else ""
        try:
            with contextlib.closing(db):
                # The clause is fixed fragments chosen above; values are parameters.
                count_sql = f"SELECT count(*) FROM messages{clause}"  # noqa: S608
                total = int(db.execute(count_sql, params).fetchone()[0])
                pages = max(1, -(-total // PAGE_SIZE))
                page = min(max(1, query.page), pages)
                rows = db.execute(
                    f"SELECT * FROM messages{clause} ORDER BY received_at DESC LIMIT ? OFFSET ?",  # noqa: S608
                    [*params, PAGE_SIZE, (page - 1) * PAGE_SIZE],
                ).fetchall()
        except sqlite3.OperationalError:
            return SearchResult([], 0, 1, 1)
        return SearchResult([_row(r) for r in rows], total, page, pages)

    def get(self, queue_id: str) -> dict[str, Any] | None:
        if not _QUEUE_ID.match(queue_id):
            return None
        db = self._connect()
        if db is None:
            return None
        with contextlib.closing(db):
            row = db.execute("SELECT * FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
        return _row(row) if row is not None else None

    def queue(self) -> list[dict[str, Any]]:
        """Messages waiting in the queue: index rows, completed from the queue files."""
        found: dict[str, dict[str, Any]] = {}
        for status, directory in (("queued", "active"), ("deferred", "deferred"), ("hold", "hold")):
            try:
                names = os.listdir(self.layout.q(directory))
            except FileNotFoundError:
                continue
            for name in names:
                if not _QUEUE_ID.match(name):
                    continue
                row = self.get(name) or {"queue_id": name}
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
        """Accepted, rejected and forged messages per bucket of ``bucket`` seconds."""
        db = self._connect()
        start = since - since % bucket
        times = [
            int((start + i * bucket) * 1000) for i in range(int(-(-(until - start) // bucket)))
        ]
        series = {name: [0.0] * len(times) for name in ("accepted", "rejected", "forged")}
        if db is not None:
            with contextlib.closing(db):
                try:
                    rows = db.execute(
                        "SELECT CAST((received_at - ?) / ? AS INTEGER) AS slot, action, "
                        "json_extract(auth, '$.dmarc') AS dmarc, auth LIKE ? AS claimed, "
                        "count(*) FROM messages WHERE received_at >= ? AND received_at < ? "
                        "GROUP BY slot, action, dmarc, claimed",
                        (start, bucket, f'%"{LOCAL_CLAIM_FLAG}"%', start, until),
                    ).fetchall()
                except sqlite3.OperationalError:
                    rows = []
            for slot, action, dmarc, claimed, count in rows:
                if not 0 <= slot < len(times):
                    continue
                series["rejected" if action == "reject" else "accepted"][slot] += count
                if dmarc == "fail" or claimed:
                    series["forged"][slot] += count
        return {
            "times": times,
            "since": int(start * 1000),
            "until": int(until * 1000),
            "bucket_ms": bucket * 1000,
            "unit": "",
            "integer": True,
            "stacked": False,
            "series": [
                {"name": name, "values": values, "colour": COUNT_COLOURS[name]}
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
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(self.layout.index, timeout=5)
            with contextlib.closing(db):
                db.execute(
                    "UPDATE messages SET status = 'deleted', updated_at = ? WHERE queue_id = ?",
                    (time.time(), queue_id),
                )
                db.commit()
        return True


def _row(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    for key, default in (("recipients", "[]"), ("delivered_to", "[]")):
        try:
            data[key] = json.loads(data.get(key) or default)
        except ValueError:
            data[key] = []
    try:
        data["auth"] = json.loads(data["auth"]) if data.get("auth") else None
    except ValueError:
        data["auth"] = None
    data["forged"] = is_forged(data["auth"])
    return data


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
