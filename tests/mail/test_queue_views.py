"""Per-recipient queue views and destination actions (`queueadmin`, CLI, console).

The queue files carry ``Envelope.rcpt`` as the outbound queue manager writes it (fields
documented in ``queuefile.py``); they are written here in the server's own format.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queueadmin import QueueAdmin, destinations, for_destination, recipient_states
from lanalyze.mail.queuefile import Envelope, Layout, footer, read_envelope
from tests.mail.test_queueadmin import cli, where
from tests.web.helpers import csrf_of, log_in, make_app

NOW = time.time()
SOON = NOW + 86400  # far enough ahead that no test run reaches it
LATER = NOW + 2 * 86400


def put(layout: Layout, queue: str, queue_id: str, rcpt: dict[str, dict[str, Any]]) -> Path:
    message = f"From: a@example.test\r\nSubject: {queue_id}\r\n\r\nbody\r\n".encode()
    recipients = list(rcpt)
    envelope = Envelope(
        queue_id=queue_id,
        mail_from="a@example.test",
        recipients=recipients,
        local={},
        relay=[r for r in recipients if rcpt[r]["state"] in ("pending", "deferred")],
        received_at=NOW - 7200,
        client_ip="127.0.0.1",
        helo="client.test",
        listener="submission",
        subject=queue_id,
        size=len(message),
        rcpt=rcpt,
    )
    path = layout.q(queue) / queue_id
    path.write_bytes(message + footer(len(message), envelope.trailer()))
    with MessageIndex(layout.index) as index:
        index.record_accepted([envelope])
    return path


def deferred(reply: str, next_attempt: float, attempts: int = 3) -> dict[str, Any]:
    return {
        "state": "deferred",
        "reply": reply,
        "status": "4.4.1",
        "attempts": attempts,
        "next_attempt": next_attempt,
        "host": "mx.slow.test[127.0.0.9]",
    }


@pytest.fixture
def layout(data_dir: Path) -> Layout:
    layout = Layout(data_dir)
    layout.create()
    # D1: one recipient sent, one deferred at slow.test; D2: deferred at slow.test too
    # (tried later, so its reply is the destination's last error); A1: pending at fast.test;
    # H1: held, for other.test.
    put(
        layout,
        "deferred",
        "D1",
        {
            "x@fast.test": {"state": "sent", "reply": "250 ok", "attempts": 1},
            "y@slow.test": deferred("421 4.4.1 try later", SOON, 2),
        },
    )
    put(layout, "deferred", "D2", {"z@Slow.test": deferred("451 4.3.0 busy", LATER, 4)})
    put(layout, "active", "A1", {"w@fast.test": {"state": "pending"}})
    put(layout, "hold", "H1", {"v@other.test": {"state": "pending"}})
    return layout


def test_recipient_states_and_destinations(layout: Layout) -> None:
    entries = QueueAdmin(layout).entries()
    d1 = next(e for e in entries if e.queue_id == "D1").envelope
    assert d1 is not None
    states = {r.recipient: r for r in recipient_states(d1)}
    assert states["x@fast.test"].state == "sent"
    assert states["y@slow.test"].state == "deferred"
    assert states["y@slow.test"].next_attempt == SOON
    assert states["y@slow.test"].reply == "421 4.4.1 try later"
    # No rcpt entry: pending while waiting, delivered once local delivery dropped it.
    plain = Envelope("Q", "a@x", ["p@l", "q@l"], {"p@l": ["p@l"]}, [], 0, "", "", "")
    assert [r.state for r in recipient_states(plain)] == ["pending", "delivered"]

    found = {d.domain: d for d in destinations(entries)}
    assert list(found) == ["slow.test", "fast.test", "other.test"]  # most deferred first
    slow = found["slow.test"]
    assert (slow.messages, slow.recipients, slow.deferred) == (2, 2, 2)
    assert slow.next_attempt == SOON
    assert slow.last_error == "451 4.3.0 busy"
    assert slow.status == "backing off"
    assert found["fast.test"].recipients == 1  # the sent recipient does not count
    assert found["fast.test"].status == "waiting"
    assert found["other.test"].queues == {"hold": 1}


def test_selection_by_destination(layout: Layout) -> None:
    admin = QueueAdmin(layout)
    assert admin.select(["deferred"], for_destination("SLOW.test")) == ["D1", "D2"]
    # D1's fast.test recipient was sent: D1 is not waiting for fast.test.
    assert admin.select(["active", "deferred"], for_destination("fast.test")) == ["A1"]


def test_flush_makes_deferred_recipients_due_now(layout: Layout) -> None:
    before = time.time()
    report = QueueAdmin(layout).flush(["D2", "A1", "H1"])
    assert [(r.queue_id, r.outcome) for r in report.results] == [
        ("D2", "done"),
        ("A1", "not_found"),  # flush takes deferred mail only
        ("H1", "not_found"),
    ]
    assert where(layout, "D2") == ["active"]
    envelope, _ = read_envelope(layout.q("active") / "D2")
    rcpt = envelope.rcpt["z@Slow.test"]
    assert before <= rcpt["next_attempt"] <= time.time()
    assert rcpt["reply"] == "451 4.3.0 busy" and rcpt["attempts"] == 4  # nothing else changed
    with MessageIndex(layout.index, readonly=True) as index:
        row = index.get("D2")
    assert row is not None and row["status"] == "queued"


def test_cli_listing_and_destination_actions(
    layout: Layout, data_dir: Path, tmp_path: Path
) -> None:
    code, out, _ = cli(data_dir, tmp_path)
    assert code == 0
    assert "y@slow.test  deferred (2 attempts, next " in out
    assert "mx.slow.test[127.0.0.9])  421 4.4.1 try later" in out
    assert "x@fast.test" not in out  # sent: not listed as waiting
    code, out, _ = cli(data_dir, tmp_path, "--format", "json")
    listed = {e["queue_id"]: e for e in json.loads(out)}
    assert listed["D1"]["recipients"][1]["state"] == "deferred"

    code, out, _ = cli(data_dir, tmp_path, "destinations", "--format", "json")
    assert [d["domain"] for d in json.loads(out)] == ["slow.test", "fast.test", "other.test"]
    code, out, _ = cli(data_dir, tmp_path, "destinations")
    assert "slow.test" in out and "backing off" in out and "451 4.3.0 busy" in out

    code, out, _ = cli(data_dir, tmp_path, "hold", "--destination", "slow.test")
    assert code == 0 and "2 message(s) put on hold" in out
    assert where(layout, "D1") == ["hold"] and where(layout, "D2") == ["hold"]
    code, out, _ = cli(data_dir, tmp_path, "release", "--destination", "slow.test")
    assert "2 message(s) released" in out and where(layout, "D1") == ["active"]
    code, out, _ = cli(data_dir, tmp_path, "delete", "--destination", "other.test")
    assert "1 message(s) deleted" in out and where(layout, "H1") == []
    code, _, err = cli(data_dir, tmp_path, "hold", "D1", "--destination", "slow.test")
    assert code == 2 and "one of them" in err
    code, _, err = cli(data_dir, tmp_path, "hold")
    assert code == 2


def test_cli_flush(layout: Layout, data_dir: Path, tmp_path: Path) -> None:
    code, out, _ = cli(data_dir, tmp_path, "flush", "--destination", "slow.test")
    assert code == 0 and "2 message(s) flushed" in out
    assert where(layout, "D1") == ["active"] and where(layout, "D2") == ["active"]
    code, _, err = cli(data_dir, tmp_path, "flush", "A1")
    assert code == 1 and "A1: not found" in err


def test_console_shows_recipients_and_destinations(layout: Layout, data_dir: Path) -> None:
    with TestClient(make_app(data_dir), follow_redirects=False) as client:
        log_in(client)
        page = client.get("/mail/queue")
        assert page.status_code == 200
        assert 'id="destinations"' in page.text
        assert "backing off" in page.text and "451 4.3.0 busy" in page.text
        assert "421 4.4.1 try later" in page.text and "mx.slow.test[127.0.0.9]" in page.text
        assert 'action="/mail/queue/destination/slow.test/flush"' in page.text
        assert 'action="/mail/queue/D1/flush"' in page.text
        # Without the CSRF token: refused, nothing moved.
        refused = client.post("/mail/queue/destination/slow.test/flush")
        assert refused.status_code == 403 and where(layout, "D1") == ["deferred"]
        headers = {"X-CSRF-Token": csrf_of(client, "/mail/queue")}
        flushed = client.post("/mail/queue/destination/slow.test/flush", headers=headers)
        assert flushed.status_code == 303
        assert flushed.headers["location"].endswith("flush%3Aslow.test%3Aok")
        assert where(layout, "D1") == ["active"] and where(layout, "D2") == ["active"]
        assert client.post("/mail/queue/destination/x/bogus", headers=headers).status_code == 404
        page = client.get("/mail/queue?done=flush%3Aslow.test%3Aok")
        assert "Flush slow.test: done" in page.text
