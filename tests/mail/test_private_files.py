"""Mail data is private: under umask 022 every directory a mail session creates is 0700 and
every file 0600 (they hold senders, recipients, subjects, bodies and client addresses).

A real server on loopback takes mail that is delivered, deferred (then delivered), held for
relay and quarantined; the authentication verdict comes from the stand-in of
test_delivery_pipeline (the DNS-backed checks are tested elsewhere).
"""

from __future__ import annotations

import os
import smtplib
import stat
from pathlib import Path

from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queueadmin import QueueAdmin
from lanalyze.mail.queuefile import Layout
from lanalyze.mail.tls import write_selfsigned
from tests.conftest import modes
from tests.mail.conftest import run_server
from tests.mail.test_delivery_pipeline import FakeAuthenticator
from tests.mail.test_mail_cli import wait_for


def wrong(found: dict[str, int], root: Path) -> dict[str, str]:
    return {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }


def test_mail_session_creates_private_files(tmp_path: Path, umask_022: None) -> None:
    data_dir = tmp_path / "new" / "data"  # created by the mail server itself
    blocker = data_dir / "mail" / "maildirs" / "bob@example.test"
    with run_server(data_dir, trusted_networks=["127.0.0.0/8"]) as running:
        # bob's Maildir is blocked by a plain file: his delivery is deferred (queue rewrite).
        fd = os.open(blocker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        fake = FakeAuthenticator()

        def install() -> None:
            running.server.auth._impl = fake
            running.server.auth.enabled = True

        with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
            client.sendmail("a@remote.test", ["bob@example.test"], b"Subject: to bob\r\n\r\nx\r\n")
            client.sendmail("a@remote.test", ["x@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
            client.sendmail("a@remote.test", ["alice@example.test"], b"Subject: ok\r\n\r\nx\r\n")
        running.call(install)
        with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
            client.sendmail("x@forged.test", ["alice@example.test"], b"Subject: junk\r\n\r\nx\r\n")
        running.wait_delivered(1)
        running.wait_delivered(1, folder=".Junk")
        layout = Layout(data_dir)
        admin = QueueAdmin(layout)
        # The deferral and the hold are written by the delivery process.
        wait_for(lambda: {e.queue for e in admin.entries()} == {"deferred", "hold"})
        blocker.unlink()
        assert admin.requeue(admin.select(["deferred"])).done
        running.wait_delivered(1, mailbox="bob@example.test")
        # While the server runs the index has its write-ahead log and shared memory files.
        assert {p.name for p in layout.root.iterdir()} >= {
            "index.sqlite",
            "index.sqlite-wal",
            "index.sqlite-shm",
        }
        found = modes(data_dir)
    assert wrong(found, data_dir) == {}
    # What the walk saw: the session really made each kind of file.
    names = set(found)
    assert "mail/queue/hold" in names and any(n.startswith("mail/queue/hold/") for n in names)
    assert any("/.Junk/new/" in n for n in names) and "mail/index.sqlite-wal" in names
    assert "mail/maildirs/alice@example.test/.Junk/maildirfolder" in names


def test_older_trees_are_tightened(data_dir: Path, umask_022: None) -> None:
    """What a version before this one left 0755/0644 is made private when the server starts."""
    layout = Layout(data_dir)
    for directory in ("queue/deferred", "queue/hold", "maildirs/bob"):
        (layout.root / directory).mkdir(parents=True)
    (layout.q("deferred") / "OLD1").write_bytes(b"a queue file rewritten by an older version")
    layout.index.write_bytes(b"")
    (data_dir / "mail" / "index.sqlite-wal").write_bytes(b"")
    layout.create()
    MessageIndex(layout.index).close()
    assert wrong(modes(layout.root), layout.root) == {}


def test_tls_key_written_over_an_open_file_is_private(tmp_path: Path, umask_022: None) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_text("an old key, world-readable")
    assert stat.S_IMODE(key.stat().st_mode) == 0o644
    write_selfsigned(cert, key, "mx.example.test", days=1)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
