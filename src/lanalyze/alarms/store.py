"""The alarm store: one SQLite row per incident, in ``<data_dir>/alarms/alarms.sqlite``.

An incident is (algorithm, subject) while it lasts: the first finding opens a row, later ones
update it (count of findings, current value, peak, last seen, evidence, severity only ever
raised), and :meth:`AlarmStore.close_quiet` closes it once no finding came for
``alarms.close_after`` seconds; a partial unique index keeps one open row per (algorithm,
subject), so a restart in the middle of an incident continues the same row. Each update also
adds a point (time, value) for the detail's chart, at most :data:`MAX_POINTS` per alarm.

The store is the one module that knows this schema; the CLI, the API and the console use its
read API. SQLite in WAL mode (readers never block the detector), created 0600 like the mail
index; every statement takes parameters, no user text is formatted into SQL.

Trust: subjects and evidence come from flows (exporters' data) and the mail index (peers'
text); readers render them escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanalyze.alarms.config import SEVERITIES
from lanalyze.alarms.detect import Finding
from lanalyze.datadir import make_private_dirs

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    algorithm TEXT NOT NULL,
    subject TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    closed_at REAL,
    findings INTEGER NOT NULL DEFAULT 1,
    value REAL NOT NULL,
    peak REAL NOT NULL,
    threshold REAL NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    filter TEXT NOT NULL DEFAULT '',
    window_start REAL NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{}',
    ack_by TEXT,
    ack_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_open_subject ON alarms (algorithm, subject)
    WHERE state = 'open';
CREATE INDEX IF NOT EXISTS alarms_opened ON alarms (opened_at);
CREATE TABLE IF NOT EXISTS alarm_points (
    alarm_id INTEGER NOT NULL,
    at REAL NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_points_alarm ON alarm_points (alarm_id, at);
"""

MAX_POINTS = 500
"""Chart points kept per alarm (the oldest go)."""
FILE_MODE = 0o600


def alarms_dir(data_dir: Path) -> Path:
    return data_dir / "alarms"


def store_path(data_dir: Path) -> Path:
    return alarms_dir(data_dir) / "alarms.sqlite"


def _private_database(path: Path) -> None:
    # As the mail index: create the file 0600 before SQLite does, so its -wal and -shm
    # companions get that mode too.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)


@dataclass
class Change:
    """What a finding did to the store: the alarm's row after it, and what was new."""

    alarm: dict[str, Any]
    event: str
    """``opened``, ``escalated`` (severity raised), ``updated`` or ``closed``."""


@dataclass
class AlarmQuery:
    open_only: bool = False
    algorithm: str = ""
    severity: str = ""
    subject: str = ""
    limit: int = 100
    since: float | None = None


@dataclass
class Alarms:
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


class AlarmStore:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=5000")
        else:
            make_private_dirs(path.parent)
            _private_database(path)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        self.db.row_factory = sqlite3.Row

    @classmethod
    def open_readonly(cls, data_dir: Path) -> AlarmStore | None:
        """The store for reading, or None while no detector has created it."""
        path = store_path(data_dir)
        if not path.exists():
            return None
        try:
            store = cls(path, readonly=True)
            # Between the detector creating the file and its schema: nothing to read yet.
            if store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alarms'").fetchone():
                return store
            store.close()
        except sqlite3.Error:
            pass
        return None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AlarmStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writes (the detector) --

    def record(self, findings: list[Finding], now: float | None = None) -> list[Change]:
        """Open or update one alarm per finding, in one transaction."""
        now = time.time() if now is None else now
        changes = []
        with self._transaction():
            for finding in findings:
                changes.append(self._record(finding, now))
        return changes

    def _record(self, f: Finding, now: float) -> Change:
        row = self.db.execute(
            "SELECT * FROM alarms WHERE algorithm = ? AND subject = ? AND state = 'open'",
            (f.algorithm, f.subject),
        ).fetchone()
        evidence = json.dumps(f.evidence, sort_keys=True)
        severity = f.severity
        if row is None:
            cursor = self.db.execute(
                "INSERT INTO alarms (algorithm, subject, address, severity, state, opened_at,"
                " updated_at, last_seen, value, peak, threshold, unit, filter, window_start,"
                " evidence) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    f.algorithm,
                    f.subject,
                    f.address,
                    severity,
                    now,
                    now,
                    now,
                    f.value,
                    f.value,
                    f.threshold,
                    f.unit,
                    f.filter,
                    f.window_start_ms / 1000,
                    evidence,
                ),
            )
            alarm_id = int(cursor.lastrowid or 0)
            event = "opened"
        else:
            alarm_id = int(row["id"])
            old = SEVERITIES.index(row["severity"])
            new = SEVERITIES.index(severity)
            event = "escalated" if new > old else "updated"
            self.db.execute(
                "UPDATE alarms SET severity = ?, updated_at = ?, last_seen = ?,"
                " findings = findings + 1, value = ?, peak = max(peak, ?), evidence = ?"
                " WHERE id = ?",
                (SEVERITIES[max(old, new)], now, now, f.value, f.value, evidence, alarm_id),
            )
        self.db.execute(
            "INSERT INTO alarm_points (alarm_id, at, value) VALUES (?, ?, ?)",
            (alarm_id, now, f.value),
        )
        self.db.execute(
            "DELETE FROM alarm_points WHERE alarm_id = ? AND at < (SELECT at FROM alarm_points"
            " WHERE alarm_id = ? ORDER BY at DESC LIMIT 1 OFFSET ?)",
            (alarm_id, alarm_id, MAX_POINTS - 1),
        )
        alarm = self.get(alarm_id)
        assert alarm is not None
        return Change(alarm, event)

    def add_evidence(self, alarm_id: int, key: str, value: Any) -> None:
        """Add one key to an alarm's evidence (the mail side of a mass mailer)."""
        self.db.execute(
            "UPDATE alarms SET evidence = json_set(evidence, '$.' || ?, json(?)) WHERE id = ?",
            (key, json.dumps(value), alarm_id),
        )

    def close_quiet(self, quiet: float, now: float | None = None) -> list[Change]:
        """Close the open alarms with no finding for ``quiet`` seconds."""
        now = time.time() if now is None else now
        with self._transaction():
            rows = self.db.execute(
                "SELECT id FROM alarms WHERE state = 'open' AND last_seen < ?", (now - quiet,)
            ).fetchall()
            self.db.execute(
                "UPDATE alarms SET state = 'closed', closed_at = ?, updated_at = ?"
                " WHERE state = 'open' AND last_seen < ?",
                (now, now, now - quiet),
            )
        changes = []
        for row in rows:
            alarm = self.get(int(row["id"]))
            if alarm is not None:
                changes.append(Change(alarm, "closed"))
        return changes

    def ack(self, alarm_id: int, who: str, now: float | None = None) -> bool:
        """Acknowledge an alarm; False when there is no such alarm."""
        now = time.time() if now is None else now
        cursor = self.db.execute(
            "UPDATE alarms SET ack_by = ?, ack_at = ? WHERE id = ?", (who, now, alarm_id)
        )
        return cursor.rowcount > 0

    # -- reads --

    def get(self, alarm_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return None if row is None else _alarm(row)

    def points(self, alarm_id: int) -> list[tuple[float, float]]:
        rows = self.db.execute(
            "SELECT at, value FROM alarm_points WHERE alarm_id = ? ORDER BY at", (alarm_id,)
        ).fetchall()
        return [(float(r["at"]), float(r["value"])) for r in rows]

    def search(self, query: AlarmQuery) -> Alarms:
        """Alarms matching every given filter, newest first."""
        where: list[str] = []
        params: list[Any] = []
        if query.open_only:
            where.append("state = 'open'")
        if query.algorithm:
            where.append("algorithm = ?")
            params.append(query.algorithm)
        if query.severity:
            where.append("severity = ?")
            params.append(query.severity)
        if query.subject:
            escaped = query.subject.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("subject LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if query.since is not None:
            where.append("last_seen >= ?")
            params.append(query.since)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        # The clause is made of the fixed fragments above; every value is a parameter.
        count_sql = f"SELECT count(*) FROM alarms{clause}"  # noqa: S608
        total = int(self.db.execute(count_sql, params).fetchone()[0])
        rows = self.db.execute(
            f"SELECT * FROM alarms{clause} ORDER BY opened_at DESC, id DESC LIMIT ?",  # noqa: S608
            [*params, query.limit],
        ).fetchall()
        return Alarms([_alarm(r) for r in rows], total)

    def open_counts(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT algorithm, count(*) AS n FROM alarms WHERE state = 'open' GROUP BY algorithm"
        ).fetchall()
        return {str(r["algorithm"]): int(r["n"]) for r in rows}


def _alarm(row: sqlite3.Row) -> dict[str, Any]:
    alarm = dict(row)
    alarm["evidence"] = json.loads(alarm["evidence"] or "{}")
    return alarm
