"""A delivered message is found by the Maildir path the index recorded for it, exactly.

The console used to search every Maildir header for `` id <queue id>``: another message whose
id has this one's as a prefix, or whose header merely mentions it, was shown in its place.
"""

from __future__ import annotations

import os
import smtplib
import sqlite3
import time
from pathlib import Path

from lanalyze.mail.delivery.maildir import find_delivered
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queuefile import Envelope, Layout
from lanalyze.web.mailstore import MailStore
from tests.mail.conftest import run_server


def envelope(queue_id: str) -> Envelope:
    return Envelope(
        queue_id=queue_id,
        mail_from="a@remote.test",
        recipients=["bob@example.test"],
        local={},
        relay=[],
        received_at=time.time(),
        client_ip="192.0.2.1",
        helo="client.test",
        listener="mta",
        subject=queue_id,
    )


def deliver(layout: Layout, queue_id: str, header: str = "") -> str:
    """A delivered copy as delivery writes it, recorded in the index; its relative path."""
    new = layout.maildirs / "bob@example.test" / "new"
    new.mkdir(parents=True, exist_ok=True)
    name = f"1700000000.M1P1Q{queue_id}.host,S=100"
    (new / name).write_bytes(
        b"Return-Path: <a@remote.test>\nDelivered-To: bob@example.test\n"
        b"Received: from client.test ([192.0.2.1])\n\tby mx.example.test (lanalyze) with ESMTP id "
        + queue_id.encode()
        + b"; Sat, 28 Nov 2026 03:00:00 +0000\n"
        + header.encode()
        + b"Subject: this is "
        + queue_id.encode()
        + b"\n\nbody\n"
    )
    relative = f"bob@example.test/new/{name}"
    with MessageIndex(layout.index) as index:
        index.record_accepted([envelope(queue_id)])
        index.set_status(
            [(queue_id, "delivered", 1, "", ["bob@example.test"])], files=[(queue_id, relative)]
        )
    return relative


def test_no_other_message_is_shown_in_place_of_an_expunged_one(data_dir: Path) -> None:
    layout = Layout(data_dir)
    layout.create()
    own = deliver(layout, "ABC1")
    deliver(layout, "ABC12")  # its Received line says " id ABC12": starts with " id ABC1"
    deliver(layout, "XYZ9", header="X-Note: forwarded, was id ABC1 at the origin\n")
    store = MailStore(data_dir)
    assert b"Subject: this is ABC1\r\n" in (store.raw("ABC1") or b"")
    # The user expunges ABC1's copy: nothing is shown for it, not the messages naming it.
    os.unlink(layout.maildirs / own)
    assert store.raw("ABC1") is None
    assert b"Subject: this is ABC12\r\n" in (store.raw("ABC12") or b"")


def test_copy_seen_by_a_mail_reader_is_found_in_cur(data_dir: Path) -> None:
    layout = Layout(data_dir)
    layout.create()
    relative = deliver(layout, "SEEN1")
    source = layout.maildirs / relative
    cur = source.parent.parent / "cur"
    cur.mkdir(exist_ok=True)
    os.rename(source, cur / (source.name + ":2,S"))
    (cur / (source.name + "0:2,S")).write_bytes(b"Subject: a longer name, not this one\n\n")
    assert find_delivered(layout.maildirs, relative) == cur / (source.name + ":2,S")
    assert b"Subject: this is SEEN1" in (MailStore(data_dir).raw("SEEN1") or b"")
    for hostile in ("../../etc/new/passwd", "/etc/new/passwd", "bob/cur/x", "x"):
        assert find_delivered(layout.maildirs, hostile) is None


OLD_SCHEMA = """
CREATE TABLE messages (
    queue_id TEXT PRIMARY KEY, received_at REAL NOT NULL, mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL, header_from TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '', message_id TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, client_ip TEXT NOT NULL DEFAULT '',
    helo TEXT NOT NULL DEFAULT '', auth_user TEXT, listener TEXT NOT NULL DEFAULT '', auth TEXT,
    action TEXT NOT NULL DEFAULT 'accept', attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '', delivered_to TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL
);
INSERT INTO messages (queue_id, received_at, mail_from, recipients, status, updated_at)
VALUES ('OLD1', 1.0, 'a@remote.test', '["bob@example.test"]', 'delivered', 1.0);
"""


def test_index_from_before_paths_were_recorded(data_dir: Path) -> None:
    layout = Layout(data_dir)
    layout.create()
    db = sqlite3.connect(layout.index)
    db.executescript(OLD_SCHEMA)
    db.close()
    store = MailStore(data_dir)
    row = store.get("OLD1")
    assert row is not None and row["files"] == [] and row["status"] == "delivered"
    assert store.raw("OLD1") is None  # shown without its bytes, not with another's
    with MessageIndex(layout.index) as index:  # the server opening it adds the table
        index.set_status([("OLD1", "delivered", 1, "", [])], files=[("OLD1", "b/new/n")])
        assert index.delivered_files("OLD1") == ["b/new/n"]


def test_server_records_where_it_delivered(data_dir: Path) -> None:
    with run_server(data_dir, mailboxes=["alice@example.test", "bob@example.test"]) as running:
        with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
            for n in range(2):
                client.sendmail(
                    "a@remote.test",
                    ["alice@example.test", "bob@example.test"],
                    f"Subject: number {n}\r\n\r\nbody\r\n".encode(),
                )
        running.wait_delivered(2)
        running.wait_delivered(2, mailbox="bob@example.test")
        store = MailStore(data_dir)
        deadline = time.monotonic() + 10
        while True:
            with MessageIndex(Layout(data_dir).index, readonly=True) as index:
                rows = index.list()
                files = {r["queue_id"]: index.delivered_files(r["queue_id"]) for r in rows}
            if len(rows) == 2 and all(len(f) == 2 for f in files.values()):
                break
            assert time.monotonic() < deadline, files
            time.sleep(0.05)
        for row in rows:
            assert sorted(f.split("/")[0] for f in files[row["queue_id"]]) == [
                "alice@example.test",
                "bob@example.test",
            ]
            raw = store.raw(row["queue_id"]) or b""
            assert f"Subject: {row['subject']}\r\n".encode() in raw
            assert f"id {row['queue_id']};".encode() in raw
