"""The message index: one SQLite row per accepted message and one per rejection worth a
sysadmin's attention; the one module that knows its schema.

Writers: the SMTP server records accepted messages and their delivery state
(:meth:`MessageIndex.record_accepted`, :meth:`MessageIndex.set_status`) and, through
:mod:`lanalyze.mail.rejections`, refused recipients, senders and messages
(:meth:`MessageIndex.record_rejections`, pruned by :attr:`IndexConfig.rejected_retention_days`).
Queue administration (:mod:`lanalyze.mail.queueadmin`) records what an operator did
(:meth:`MessageIndex.record_admin`). Readers: ``lanalyze mail ls/show`` and the console use the
read API below (search with filters and paging, counts over time, one message, rejections,
the Maildir files a message was delivered to), so no other module writes SQL against these
tables.

Schema changes are additive (``CREATE TABLE IF NOT EXISTS``), so an index written by an
older version opens and is brought up to date by the server; read-only readers of an index
that lacks a newer table get empty answers for it (messages delivered before delivery paths
were recorded have none).

SQLite in WAL mode (readers never block the server) with ``synchronous=NORMAL``: the index is
derived data, the queue files and Maildirs are the truth, so it does not pay an fsync per
message. Every statement takes parameters; no peer or user text is ever formatted into SQL
(``WHERE`` clauses are built from fixed fragments, ``LIKE`` patterns escaped). A connection
belongs to one thread: the server uses it only from its index thread.

Trust: rows hold the peers' text (addresses, HELO names, subjects); readers render it escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from lanalyze.configbase import Section
from lanalyze.mail.auth.flags import (
    DISPLAY_NAME_FLAG,
    FLAG_VERSION,
    LOCAL_CLAIM_FLAG,
    LOOKALIKE_FLAG,
    MISMATCH_FLAG,
    WELL_KNOWN_FLAG,
)

if TYPE_CHECKING:
    from lanalyze.mail.queuefile import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    header_from TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    client_ip TEXT NOT NULL DEFAULT '',
    helo TEXT NOT NULL DEFAULT '',
    auth_user TEXT,
    listener TEXT NOT NULL DEFAULT '',
    auth TEXT,
    action TEXT NOT NULL DEFAULT 'accept',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_to TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_status ON messages (status);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    client_ip TEXT NOT NULL DEFAULT '',
    listener TEXT NOT NULL DEFAULT '',
    helo TEXT NOT NULL DEFAULT '',
    mail_from TEXT NOT NULL DEFAULT '',
    recipient TEXT NOT NULL DEFAULT '',
    auth_user TEXT,
    code INTEGER NOT NULL,
    reason TEXT NOT NULL,
    reply TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS rejections_at ON rejections (at);
CREATE TABLE IF NOT EXISTS delivered_files (
    queue_id TEXT NOT NULL,
    path TEXT NOT NULL,  -- relative to mail/maildirs/, as delivered: <folder>/new/<name>
    PRIMARY KEY (queue_id, path)
) WITHOUT ROWID;
"""

STATUSES = ("queued", "delivered", "deferred", "hold", "deleted", "corrupt", "bounced")
VERDICTS = ("any", "pass", "fail", "forged", "none")
REJECTION_FIELDS = (
    "at",
    "client_ip",
    "listener",
    "helo",
    "mail_from",
    "recipient",
    "auth_user",
    "code",
    "reason",
    "reply",
)
COUNT_SERIES = ("accepted", "rejected", "forged")


class IndexConfig(Section):
    """``[mail.index]``: what the message index keeps besides accepted messages."""

    record_rejections: bool = Field(
        default=True,
        description="Record refused recipients, senders and messages (time, client, HELO, "
        "envelope, reply) for `mail ls --rejected` and the console.",
    )
    rejected_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Rejection rows older than this many days are deleted (checked hourly).",
    )
    rejected_queue: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Rejections waiting for the index writer at most; beyond, new ones are "
        "counted in `lanalyze_mail_rejections_dropped_total` and not stored.",
    )


MARKS = {
    "dmarc_fail": "DMARC fail",
    "local_claim": "claims our domain",
    "well_known": "unverified well-known sender",
    "lookalike": "lookalike domain",
    "display_name": "display-name spoof",
    "mismatch": "envelope/From differ",
}
"""Sender marks a message row carries (``marks``), with the words the list and the CLI show.
All but ``mismatch`` make a message *forged* (the filter, the chart's series)."""
_FLAG_MARKS = {
    LOCAL_CLAIM_FLAG: "local_claim",
    WELL_KNOWN_FLAG: "well_known",
    LOOKALIKE_FLAG: "lookalike",
    DISPLAY_NAME_FLAG: "display_name",
}
FORGED_FLAGS = tuple(_FLAG_MARKS)


def sender_marks(auth: object) -> list[str]:
    """The marks of a stored verdict: what the message page warns about the sender, as
    words. The flags were computed once, at acceptance, by the authenticator (which knows
    the local domains); this only reads them. An envelope/From mismatch is marked when DMARC
    did not confirm the From: domain: with a pass the From: is genuine and a different
    bounce domain is how mailing lists and bulk senders work. A stored verdict of another
    shape (an older version's, or damaged) has no marks."""
    if not isinstance(auth, dict):
        return []
    flags = auth.get("flags")
    present = {str(f) for f in flags} if isinstance(flags, list) else set()
    marks = ["dmarc_fail"] if auth.get("dmarc") == "fail" else []
    marks += [mark for flag, mark in _FLAG_MARKS.items() if flag in present]
    if MISMATCH_FLAG in present and auth.get("dmarc") != "pass":
        marks.append("mismatch")
    return marks


def is_forged(auth: object) -> bool:
    """DMARC failed, or the From: claims a domain it does not come from (one of ours, a
    well-known one, a lookalike of either, or in its display name)."""
    return any(mark != "mismatch" for mark in sender_marks(auth))


# The SQL twin of is_forged, over the stored verdict; the flag words are parameters.
_FORGED_SQL = (
    "(json_extract(auth, '$.dmarc') = 'fail' OR EXISTS (SELECT 1 FROM "  # noqa: S608 (only ?s)
    "json_each(auth, '$.flags') WHERE value IN (" + ",".join("?" * len(FORGED_FLAGS)) + ")))"
)


def like_pattern(text: str) -> str:
    """``%text%`` for ``LIKE ... ESCAPE '\\'`` with the user's wildcards made literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class MessageQuery:
    sender: str = ""  # envelope sender or header From:, substring
    recipient: str = ""
    subject: str = ""
    verdict: str = "any"  # one of VERDICTS
    status: str | None = None
    since: float | None = None
    until: float | None = None
    page: int = 1
    page_size: int = 50


@dataclass
class RejectionQuery:
    sender: str = ""
    recipient: str = ""
    client: str = ""  # client address or HELO name, substring
    reason: str = ""  # exact reason word; "" = any
    since: float | None = None
    until: float | None = None
    page: int = 1
    page_size: int = 50


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


FILE_MODE = 0o600


def _private_database(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644 under umask
    022): SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode.
    A database or its companions left wider by an older version are tightened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)


class MessageIndex:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=5000")
        else:
            _private_database(path)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # Before the first statement: a CLI or console writer opening the index while
            # the server holds the write lock waits for it instead of failing.
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        self.db.row_factory = sqlite3.Row

    @classmethod
    def open_readonly(cls, path: Path) -> MessageIndex | None:
        """The index for reading, or None while the server has not created it yet."""
        if not path.exists():
            return None
        try:
            return cls(path, readonly=True)
        except sqlite3.Error:
            return None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> MessageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def record_accepted(self, envelopes: Iterable[Envelope]) -> None:
        """One row per message; a row that exists already (its delivery was recorded first,
        possible with several acceptor processes) is left as it is."""
        now = time.time()
        rows = [
            (
                e.queue_id,
                e.received_at,
                e.mail_from,
                json.dumps(e.recipients),
                e.header_from,
                e.subject,
                e.message_id,
                e.size,
                "queued",
                e.client_ip,
                e.helo,
                e.user,
                e.listener,
                json.dumps(e.auth) if e.auth is not None else None,
                e.action,
                now,
            )
            for e in envelopes
        ]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT OR IGNORE INTO messages (queue_id, received_at, mail_from, recipients, "
            "header_from, subject, message_id, size, status, client_ip, helo, auth_user, "
            "listener, auth, action, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self.db.execute("COMMIT")

    def set_status(
        self,
        updates: Iterable[tuple[str, str, int, str, list[str]]],
        envelopes: Iterable[Envelope] = (),
        files: Iterable[tuple[str, str]] = (),
    ) -> None:
        """(queue_id, status, attempts, last_error, delivered_to) for each message; the
        ``envelopes`` create rows an acceptor process has not written yet; ``files`` are
        (queue_id, path relative to ``mail/maildirs/``) of the copies delivered, kept over
        every delivery round of a message (one round may deliver some recipients only)."""
        envelopes = list(envelopes)
        if envelopes:
            self.record_accepted(envelopes)
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "UPDATE messages SET status=?, attempts=?, last_error=?, delivered_to=?, "
            "updated_at=? WHERE queue_id=?",
            [(s, a, err, json.dumps(to), now, q) for q, s, a, err, to in updates],
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO delivered_files (queue_id, path) VALUES (?, ?)", files
        )
        self.db.execute("COMMIT")

    def record_admin(self, changes: Iterable[tuple[str, str, str]]) -> None:
        """(queue_id, status, note) of messages an operator held, released, requeued or
        deleted, or found corrupt, in one transaction; a non-empty note replaces
        ``last_error`` (what ``mail ls`` and the console show), attempts stay."""
        rows = [(status, note, note, time.time(), q) for q, status, note in changes]
        if not rows:
            return
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "UPDATE messages SET status=?, last_error=CASE WHEN ?='' THEN last_error ELSE ? END, "
            "updated_at=? WHERE queue_id=?",
            rows,
        )
        self.db.execute("COMMIT")

    def record_rejections(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows in the order of :data:`REJECTION_FIELDS`, one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT INTO rejections (at, client_ip, listener, helo, mail_from, recipient, "
            "auth_user, code, reason, reply) VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self.db.execute("COMMIT")

    def prune_rejections(self, older_than: float, chunk: int = 5000) -> int:
        """Delete rejections older than ``older_than``, ``chunk`` rows per transaction: a
        flood's worth of old rows must not hold the write lock the server's message rows
        wait for."""
        deleted = 0
        while True:
            cursor = self.db.execute(
                "DELETE FROM rejections WHERE id IN "
                "(SELECT id FROM rejections WHERE at < ? ORDER BY at LIMIT ?)",
                (older_than, chunk),
            )
            deleted += cursor.rowcount
            if cursor.rowcount < chunk:
                return deleted

    def add_flags(self, compute: Callable[[str, str], list[str]], chunk: int = 500) -> int:
        """Bring verdicts stored before :data:`FLAG_VERSION` up to date, ``chunk`` rows per
        transaction (the caller repeats until 0, so the server's own writes interleave):
        ``compute(header_from, dmarc word)`` gives the flags to add. Returns the rows done."""
        rows = self.db.execute(
            # Only verdicts that parse as objects: anything else is left as it is.
            "SELECT queue_id, header_from, auth FROM messages WHERE json_valid(auth) "
            "AND json_type(auth) = 'object' "
            "AND coalesce(json_extract(auth, '$.flag_version'), 0) < ? LIMIT ?",
            (FLAG_VERSION, chunk),
        ).fetchall()
        updates = []
        for queue_id, header_from, text in rows:
            auth = json.loads(text)
            flags = auth.get("flags")
            flags = [str(f) for f in flags] if isinstance(flags, list) else []
            dmarc = auth.get("dmarc")
            added = compute(str(header_from or ""), dmarc if isinstance(dmarc, str) else "")
            auth["flags"] = list(dict.fromkeys([*flags, *added]))
            auth["flag_version"] = FLAG_VERSION
            updates.append((json.dumps(auth), queue_id))
        if updates:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE messages SET auth=? WHERE queue_id=?", updates)
            self.db.execute("COMMIT")
        return len(updates)

    # ---------------------------------------------------------------- reading

    def get(self, queue_id: str) -> dict[str, Any] | None:
        """One message, with ``files``: the Maildir copies it was delivered to."""
        row = self.db.execute("SELECT * FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        if row is None:
            return None
        message = _message(row)
        message["files"] = self.delivered_files(queue_id)
        return message

    def delivered_files(self, queue_id: str) -> list[str]:
        """Where a message's copies were delivered, relative to ``mail/maildirs/`` (exactly
        this message's: looked up by its queue id, never by searching message text)."""
        try:
            rows = self.db.execute(
                "SELECT path FROM delivered_files WHERE queue_id=? ORDER BY path", (queue_id,)
            ).fetchall()
        except sqlite3.OperationalError:  # an index written before paths were recorded
            return []
        return [str(r[0]) for r in rows]

    def get_many(self, queue_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rows of these messages by queue id (missing ones left out)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(queue_ids), 500):
            chunk = list(queue_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT * FROM messages WHERE queue_id IN ({marks})",  # noqa: S608 (only ?s)
                chunk,
            ).fetchall()
            for row in rows:
                found[row["queue_id"]] = _message(row)
        return found

    def search(self, query: MessageQuery) -> Page:
        """Messages matching every given filter, newest first, one page."""
        where: list[str] = []
        params: list[Any] = []
        if query.sender:
            where.append("(mail_from LIKE ? ESCAPE '\\' OR header_from LIKE ? ESCAPE '\\')")
            params += [like_pattern(query.sender)] * 2
        if query.recipient:
            where.append("recipients LIKE ? ESCAPE '\\'")
            params.append(like_pattern(query.recipient))
        if query.subject:
            where.append("subject LIKE ? ESCAPE '\\'")
            params.append(like_pattern(query.subject))
        if query.status is not None:
            where.append("status = ?")
            params.append(query.status)
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
            where.append(_FORGED_SQL)
            params += FORGED_FLAGS
        elif query.verdict == "none":
            where.append("auth IS NULL")
        return self._page(
            "messages", "received_at", where=where, params=params, query=query, shape=_message
        )

    def rejections(self, query: RejectionQuery) -> Page:
        """Rejections matching every given filter, newest first, one page."""
        where: list[str] = []
        params: list[Any] = []
        if query.sender:
            where.append("mail_from LIKE ? ESCAPE '\\'")
            params.append(like_pattern(query.sender))
        if query.recipient:
            where.append("recipient LIKE ? ESCAPE '\\'")
            params.append(like_pattern(query.recipient))
        if query.client:
            where.append("(client_ip LIKE ? ESCAPE '\\' OR helo LIKE ? ESCAPE '\\')")
            params += [like_pattern(query.client)] * 2
        if query.reason:
            where.append("reason = ?")
            params.append(query.reason)
        if query.since is not None:
            where.append("at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("at < ?")
            params.append(query.until)
        return self._page("rejections", "at", where=where, params=params, query=query, shape=dict)

    def from_client(self, client_ip: str, since: float, limit: int = 20) -> dict[str, Any]:
        """What one client address sent since ``since``: its messages (newest first, at most
        ``limit``) with their verdicts, how many in all and how many forged, and its
        rejections per reason (the mail side of a mass-mailer alarm)."""
        rows = self.db.execute(
            "SELECT * FROM messages WHERE client_ip = ? AND received_at >= ?"
            " ORDER BY received_at DESC LIMIT ?",
            (client_ip, since, limit),
        ).fetchall()
        total = self.db.execute(
            "SELECT count(*) FROM messages WHERE client_ip = ? AND received_at >= ?",
            (client_ip, since),
        ).fetchone()[0]
        forged = self.db.execute(
            "SELECT count(*) FROM messages WHERE client_ip = ? AND received_at >= ? AND "  # noqa: S608
            + _FORGED_SQL,
            (client_ip, since, *FORGED_FLAGS),
        ).fetchone()[0]
        reasons = self.db.execute(
            "SELECT reason, count(*) AS n FROM rejections WHERE client_ip = ? AND at >= ?"
            " GROUP BY reason ORDER BY n DESC",
            (client_ip, since),
        ).fetchall()
        return {
            "messages": [_message(row) for row in rows],
            "total": int(total),
            "forged": int(forged),
            "rejections": {str(r["reason"]): int(r["n"]) for r in reasons},
        }

    def activity(self, since: float, limit: int = 1000) -> dict[str, list[dict[str, Any]]]:
        """Per-sender activity since ``since`` for detection (the busiest first, at most
        ``limit`` rows each): messages and recipients per submission user, rejections and
        DMARC failures per client address, and messages claiming one of our domains without
        a DMARC pass, per From: header."""
        users = self.db.execute(
            "SELECT auth_user AS user, count(*) AS messages,"
            " sum(json_array_length(recipients)) AS recipients FROM messages"
            " WHERE auth_user IS NOT NULL AND received_at >= ? GROUP BY auth_user"
            " ORDER BY recipients DESC LIMIT ?",
            (since, limit),
        ).fetchall()
        rejected = self.db.execute(
            "SELECT client_ip AS client, count(*) AS n FROM rejections WHERE at >= ?"
            " AND client_ip != '' GROUP BY client_ip ORDER BY n DESC LIMIT ?",
            (since, limit),
        ).fetchall()
        dmarc = self.db.execute(
            "SELECT client_ip AS client, count(*) AS n FROM messages WHERE received_at >= ?"
            " AND json_extract(auth, '$.dmarc') = 'fail' GROUP BY client_ip"
            " ORDER BY n DESC LIMIT ?",
            (since, limit),
        ).fetchall()
        claims = self.db.execute(
            "SELECT header_from, count(*) AS n FROM messages WHERE received_at >= ? AND"
            " EXISTS (SELECT 1 FROM json_each(auth, '$.flags') WHERE value = ?)"
            " GROUP BY header_from ORDER BY n DESC LIMIT ?",
            (since, LOCAL_CLAIM_FLAG, limit),
        ).fetchall()
        return {
            "users": [dict(r) for r in users],
            "rejected_clients": [dict(r) for r in rejected],
            "dmarc_failed_clients": [dict(r) for r in dmarc],
            "local_claims": [dict(r) for r in claims],
        }

    def rejection_summary(
        self, since: float | None, until: float | None, limit: int = 10
    ) -> dict[str, list[dict[str, Any]]]:
        """Rejections per reason, and the clients refused most, in a time range."""
        lower = since if since is not None else 0.0
        upper = until if until is not None else float("inf")
        try:
            reasons = self.db.execute(
                "SELECT reason, count(*) AS count FROM rejections WHERE at >= ? AND at < ? "
                "GROUP BY reason ORDER BY count DESC, reason",
                (lower, upper),
            ).fetchall()
            clients = self.db.execute(
                "SELECT client_ip, count(*) AS count, max(at) AS last_at, "
                "count(DISTINCT reason) AS reasons FROM rejections WHERE at >= ? AND at < ? "
                "GROUP BY client_ip ORDER BY count DESC, client_ip LIMIT ?",
                (lower, upper, limit),
            ).fetchall()
        except sqlite3.OperationalError:  # an index written before rejections were kept
            return {"reasons": [], "clients": []}
        return {"reasons": [dict(r) for r in reasons], "clients": [dict(r) for r in clients]}

    def rejection_reasons(self) -> list[str]:
        """The reason words present, for a search form's choices."""
        try:
            rows = self.db.execute("SELECT DISTINCT reason FROM rejections ORDER BY reason")
            return [str(r[0]) for r in rows.fetchall()]
        except sqlite3.OperationalError:  # an index written before rejections were kept
            return []

    def counts(self, since: float, until: float, bucket: int) -> dict[str, list[int]]:
        """Accepted, rejected and forged per bucket of ``bucket`` seconds from ``since``
        (aligned down to a whole bucket). Rejected: messages refused after DATA plus every
        recorded rejection (a refused recipient or sender, a session ended for errors)."""
        start = since - since % bucket
        slots = int(-(-(until - start) // bucket))
        series = {name: [0] * slots for name in COUNT_SERIES}
        try:
            rows = self.db.execute(
                "SELECT CAST((received_at - ?) / ? AS INTEGER) AS slot, action = 'reject', "  # noqa: S608
                f"{_FORGED_SQL}, count(*) "  # a fixed fragment; the flags are parameters
                "FROM messages WHERE received_at >= ? AND received_at < ? "
                "GROUP BY 1, 2, 3",
                (start, bucket, *FORGED_FLAGS, start, until),
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        for slot, rejected, forged, count in rows:
            if 0 <= slot < slots:
                series["rejected" if rejected else "accepted"][slot] += count
                if forged:
                    series["forged"][slot] += count
        try:
            refused = self.db.execute(
                "SELECT CAST((at - ?) / ? AS INTEGER) AS slot, count(*) FROM rejections "
                "WHERE at >= ? AND at < ? GROUP BY 1",
                (start, bucket, start, until),
            ).fetchall()
        except sqlite3.OperationalError:
            refused = []
        for slot, count in refused:
            if 0 <= slot < slots:
                series["rejected"][slot] += count
        return series

    def _page(
        self,
        table: str,
        order: str,
        *,
        where: list[str],
        params: list[Any],
        query: MessageQuery | RejectionQuery,
        shape: Any,
    ) -> Page:
        clause = " WHERE " + " AND ".join(where) if where else ""
        size = max(1, query.page_size)
        try:
            # table, order and clause are fixed fragments chosen above; values are parameters.
            total = int(
                self.db.execute(f"SELECT count(*) FROM {table}{clause}", params).fetchone()[0]  # noqa: S608
            )
            pages = max(1, -(-total // size))
            page = min(max(1, query.page), pages)
            rows = self.db.execute(
                f"SELECT * FROM {table}{clause} ORDER BY {order} DESC LIMIT ? OFFSET ?",  # noqa: S608
                [*params, size, (page - 1) * size],
            ).fetchall()
        except sqlite3.OperationalError:  # no such table yet (older index), locked too long
            return Page([], 0, 1, 1)
        return Page([shape(r) for r in rows], total, page, pages)

    # Last: a method named ``list`` shadows the builtin in annotations below it.
    def list(self, *, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        return self.search(MessageQuery(status=status, page_size=limit)).rows


def _message(row: sqlite3.Row) -> dict[str, Any]:
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
    data["marks"] = sender_marks(data["auth"])
    data["forged"] = is_forged(data["auth"])
    return data
