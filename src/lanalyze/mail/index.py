"""The message index: one SQLite row per accepted message, for ``mail ls`` / ``mail show``.

SQLite in WAL mode (readers such as ``lanalyze mail ls`` never block the server) with
``synchronous=NORMAL``: the index is derived data, the queue files and Maildirs are the
truth, so it does not pay an fsync per message. Every statement takes parameters; no peer
text is ever formatted into SQL. A connection belongs to one thread: the server uses it only
from its single disk-worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
"""

STATUSES = ("queued", "delivered", "deferred", "hold", "deleted", "corrupt")


class MessageIndex:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

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
    ) -> None:
        """(queue_id, status, attempts, last_error, delivered_to) for each message; the
        ``envelopes`` create rows an acceptor process has not written yet."""
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
        self.db.execute("COMMIT")

    def list(self, *, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        if status is None:
            cursor = self.db.execute(
                "SELECT * FROM messages ORDER BY received_at DESC LIMIT ?", (limit,)
            )
        else:
            cursor = self.db.execute(
                "SELECT * FROM messages WHERE status=? ORDER BY received_at DESC LIMIT ?",
                (status, limit),
            )
        return [_row(r) for r in cursor.fetchall()]

    def get(self, queue_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        return _row(row) if row is not None else None


def _row(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["recipients"] = json.loads(data["recipients"])
    data["delivered_to"] = json.loads(data["delivered_to"])
    data["auth"] = json.loads(data["auth"]) if data["auth"] else None
    return data
