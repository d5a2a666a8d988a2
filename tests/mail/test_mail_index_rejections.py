"""Rejections reach the message index: real SMTP clients (smtplib, swaks) get refused, and the
index, ``lanalyze mail ls --rejected`` and the counts show it."""

from __future__ import annotations

import html
import json
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.index import IndexConfig, MessageIndex, RejectionQuery
from lanalyze.mail.rejections import STORED
from lanalyze.mail.smtp import protocol
from lanalyze.mail.smtp.address import Path as SMTPPath
from tests.conftest import lanalyze_cmd, require_tool
from tests.mail.conftest import PASSWORD, RunningServer, password_hash, run_server

REASONS = {
    "unknown_user",
    "relay_denied",
    "sender_not_allowed",
    "header_from_not_allowed",
    "too_big",
    "too_many_recipients",
    "too_many_errors",
    "connection_limit",
    "flood",
    "bare_newline",
    "auth_required",
    "auth_failed",
    "timeout",
    "policy_reject",
    "local_error",
    "other",
}
MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


def _wait_rows(data_dir: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        index = MessageIndex.open_readonly(data_dir / "mail" / "index.sqlite")
        if index is not None:
            with index:
                rows = index.rejections(RejectionQuery(page_size=100)).rows
            if len(rows) >= count:
                return rows
        time.sleep(0.05)
    raise AssertionError(f"{len(rows)} of {count} rejections recorded: {rows}")


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_refusals_are_recorded_with_envelope_and_reason(
    data_dir: Path, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    with run_server(
        data_dir,
        max_message_size=10_000,
        hard_error_limit=3,
        tls_cert=str(cert),
        tls_key=str(key),
        submission_listen=["127.0.0.1:0"],
        users=[
            {"name": "alice", "password_hash": password_hash(), "addresses": ["alice@example.test"]}
        ],
    ) as running:
        _refuse(running)
        rows = _wait_rows(data_dir, 6)
    by_reason = {row["reason"]: row for row in rows}
    unknown = by_reason["unknown_user"]
    assert (unknown["code"], unknown["recipient"]) == (550, "nobody@example.test")
    assert unknown["mail_from"] == "eve@outside.test"
    assert unknown["helo"] == "probe.outside.test" and unknown["client_ip"] == "127.0.0.1"
    assert unknown["reply"].startswith("5.1.1")
    relay = by_reason["relay_denied"]
    assert (relay["code"], relay["recipient"]) == (554, "victim@far.test")
    assert by_reason["too_big"]["mail_from"] == "big@outside.test"
    assert by_reason["too_many_errors"]["code"] == 421
    assert by_reason["sender_not_allowed"]["mail_from"] == "bob@example.test"
    header = by_reason["header_from_not_allowed"]
    assert header["auth_user"] == "alice" and header["recipient"] == "bob@example.test"
    assert not any(row["reason"] in ("syntax", "other") for row in rows)
    # The accepted message left no row; the index has it as a message.
    with MessageIndex(data_dir / "mail" / "index.sqlite", readonly=True) as index:
        assert len(index.list()) == 1
        now = time.time()
        counts = index.counts(now - 3600, now + 1, 3600)
    assert sum(counts["accepted"]) == 1 and sum(counts["rejected"]) == len(rows)
    _cli_lists(data_dir, len(rows))
    _console_shows(data_dir, len(rows))


def _console_shows(data_dir: Path, count: int) -> None:
    from starlette.testclient import TestClient

    from tests.web.helpers import log_in, make_app

    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    page = client.get("/mail/rejected", params={"recipient": "nobody@example.test"}).text
    assert "1 rejection " in page and "probe.outside.test" in page and "Unknown user" in page
    chart = re.search(r'id="mailcounts-data">(.*?)</script>', client.get("/mail?range=1h").text)
    assert chart
    series = json.loads(html.unescape(chart.group(1)))["series"]
    assert {s["name"]: sum(s["values"]) for s in series} == {
        "accepted": 1,
        "rejected": count,
        "forged": 0,
    }


def _refuse(running: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
        client.ehlo("probe.outside.test")
        assert client.mail("eve@outside.test")[0] == 250
        assert client.rcpt("nobody@example.test")[0] == 550
        assert client.rcpt("victim@far.test")[0] == 554
        assert client.rcpt("bob@example.test")[0] == 250
    with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
        client.ehlo("probe.outside.test")
        assert client.mail("big@outside.test", ["SIZE=99999999"])[0] == 552
        assert client.sendmail("x@outside.test", ["bob@example.test"], MESSAGE) == {}
    noisy = smtplib.SMTP("127.0.0.1", running.port(), timeout=10)
    noisy.ehlo("noisy")
    for _ in range(3):
        assert noisy.docmd("NOPE")[0] == 502
    assert noisy.getreply()[0] == 421  # the third error ends the session
    noisy.close()
    with smtplib.SMTP("127.0.0.1", running.port("submission"), timeout=10) as client:
        client.starttls(context=_tls())
        client.ehlo("laptop")
        client.login("alice", PASSWORD)
        assert client.mail("bob@example.test")[0] == 553
        client.rset()
        forged = MESSAGE.replace(b"From: alice@", b"From: bob@")
        try:
            client.sendmail("alice@example.test", ["bob@example.test"], forged)
        except smtplib.SMTPDataError as refused:
            assert refused.smtp_code == 553
        else:
            raise AssertionError("forged From: accepted")


def _cli_lists(data_dir: Path, count: int) -> None:
    config = data_dir.parent / "rejections.toml"
    config.write_text(f'[general]\ndata_dir = "{data_dir}"\n')
    base = [*lanalyze_cmd(), "--config", str(config), "mail", "ls", "--rejected"]
    out = subprocess.run([*base, "--format", "json"], capture_output=True, check=True, timeout=60)
    rows = json.loads(out.stdout)
    assert len(rows) == count and {"reason", "recipient", "client_ip", "helo"} <= set(rows[0])
    table = subprocess.run(
        [*base, "--recipient", "nobody"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "unknown_user" in table.stdout and "relay_denied" not in table.stdout


def test_pipelined_refusals_pair_with_their_commands(data_dir: Path) -> None:
    swaks = require_tool("swaks")
    with run_server(data_dir) as running:
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"127.0.0.1:{running.port()}",
                "--pipeline",
                "--quit-after",
                "RCPT",
                "--helo",
                "pipe.test",
                "--from",
                "p@outside.test",
                "--to",
                "ghost@example.test,alice@example.test,other@far.test",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "550 5.1.1" in result.stdout, result.stdout
        rows = _wait_rows(data_dir, 2)
    assert {(r["reason"], r["recipient"]) for r in rows} == {
        ("unknown_user", "ghost@example.test"),
        ("relay_denied", "other@far.test"),
    }
    assert all(r["mail_from"] == "p@outside.test" and r["helo"] == "pipe.test" for r in rows)


def test_full_queue_counts_drops_and_retention_prunes(data_dir: Path) -> None:
    from lanalyze.mail.rejections import DROPPED, RejectionLog

    log = RejectionLog(data_dir / "index.sqlite", IndexConfig(rejected_queue=100))
    log._thread = object()  # type: ignore[assignment]  # "started", writer not running
    before = DROPPED.labels("mta")._value.get()
    for _ in range(150):
        log._put("mta", (0.0,))
    assert DROPPED.labels("mta")._value.get() - before == 50
    assert log._queue.qsize() == 100
    with MessageIndex(data_dir / "index.sqlite") as index:
        row = (time.time(), "192.0.2.1", "mta", "h", "s@x", "r@y", None, 550, "unknown_user", "")
        old = (time.time() - 40 * 86400, *row[1:])
        index.record_rejections([row, old])
        assert index.prune_rejections(time.time() - 30 * 86400) == 1
        index.record_rejections([old] * 25)
        assert index.prune_rejections(time.time() - 30 * 86400, chunk=10) == 25
        assert index.rejections(RejectionQuery()).total == 1


class _Policy:
    """Refuses with a reply whose text looks like relay denial but whose reason says otherwise:
    only the reason word may decide what is recorded."""

    def check_sender(self, session: protocol.SMTPSession, path: SMTPPath) -> protocol.Reply | None:
        return None

    def check_recipient(
        self, session: protocol.SMTPSession, path: SMTPPath
    ) -> protocol.Reply | None:
        if path.local == "ghost":
            return protocol.Reply(550, "5.7.1 Relay access denied (not really)", "unknown_user")
        return None


def test_the_core_emits_structured_rejections() -> None:
    session = protocol.SMTPSession(protocol.SessionOptions(), _Policy(), "192.0.2.1")
    events = session.receive(
        b"EHLO c\r\nMAIL FROM:<s@x> SIZE=99999999999\r\nMAIL FROM:<s@x>\r\n"
        b"RCPT TO:<ghost@y>\r\nRCPT TO:<b@y>\r\nNOPE\r\nDATA\r\nhi\r\n.\r\n"
    )
    found = [
        (e.command, e.reply.code, e.reason, e.mail_from, e.recipient)
        for e in events
        if isinstance(e, protocol.Rejection)
    ]
    assert found == [
        ("MAIL", 552, "too_big", "s@x", ""),
        ("RCPT", 550, "unknown_user", "s@x", "ghost@y"),
        ("", 502, "unknown_command", "s@x", ""),
    ]
    # A refused message names its envelope (the shell's reason word travels on the reply).
    events = session.message_done(protocol.Reply(550, "5.7.1 DMARC reject", "policy_reject"))
    [rejection] = [e for e in events if isinstance(e, protocol.Rejection)]
    assert (rejection.command, rejection.reason, rejection.mail_from, rejection.recipient) == (
        "DATA",
        "policy_reject",
        "s@x",
        "b@y",
    )
    assert set(STORED) <= protocol.REASONS and set(STORED.values()) == REASONS
    from lanalyze.web.pages.mail import REASON_LABELS

    assert set(REASON_LABELS) == REASONS  # the console names every reason


def test_dmarc_policy_reject_is_recorded(data_dir: Path) -> None:
    from tests.mail.dnsserver import knot_server, txt

    require_tool("knotd")
    records = [
        f"@ TXT {txt('v=spf1 ip4:192.0.2.1 -all')}",
        f"_dmarc TXT {txt('v=DMARC1; p=reject')}",
    ]
    zones = {"bank.test": "\n".join(records)}
    with knot_server(data_dir.parent / "knot", zones) as dns:
        auth = {"enabled": True, "resolver": dns.address, "dns_timeout": 2.0}
        with run_server(data_dir, auth=auth) as running:
            forged = (
                b"From: Bank <alerts@bank.test>\r\nTo: alice@example.test\r\n"
                b"Subject: verify your account\r\n\r\nclick\r\n"
            )
            with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
                client.ehlo("phish.test")
                try:
                    client.sendmail("alerts@bank.test", ["alice@example.test"], forged)
                except smtplib.SMTPDataError as refused:
                    assert refused.smtp_code == 550
                else:
                    raise AssertionError("DMARC p=reject not enforced")
            [row] = _wait_rows(data_dir, 1)
    assert row["reason"] == "policy_reject" and row["code"] == 550
    assert (row["mail_from"], row["recipient"]) == ("alerts@bank.test", "alice@example.test")
    assert row["helo"] == "phish.test" and "5.7.1" in row["reply"]


def test_limit_disconnects_are_recorded(data_dir: Path) -> None:
    with run_server(data_dir, max_connections_per_client=1, command_timeout=1.0) as running:
        idle = smtplib.SMTP("127.0.0.1", running.port(), timeout=10)
        refused = smtplib.SMTP()
        code, _ = refused.connect("127.0.0.1", running.port())
        assert code == 421
        refused.close()
        # The first client says nothing more: the command timeout ends its session.
        assert idle.getreply()[0] == 421
        idle.close()
        rows = _wait_rows(data_dir, 2)
    assert sorted(r["reason"] for r in rows) == ["connection_limit", "timeout"]
    assert all(r["client_ip"] == "127.0.0.1" for r in rows)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.binary(max_size=300)
        | st.sampled_from(
            [
                b"EHLO x\r\n",
                b"MAIL FROM:<a\x01@b>\r\n",
                b"RCPT TO:<c@d>\r\n",
                b"RCPT TO:<\x7f@d>\r\n",
                b"DATA\r\n",
                b"BDAT 3 LAST\r\n",
                b"NOPE\r\n",
                b"\xff\r\n",
            ]
        ),
        max_size=20,
    ),
    helo=st.text(max_size=40),
)
def test_peer_bytes_never_break_the_hook(chunks: list[bytes], helo: str) -> None:
    """Whatever a peer sends, the core's rejections become clean rows and never raise."""
    from lanalyze.mail.rejections import RejectionLog

    class Refuse:
        def check_sender(self, session: Any, path: Any) -> protocol.Reply | None:
            return None

        def check_recipient(self, session: Any, path: Any) -> protocol.Reply | None:
            return protocol.Reply(554, "5.7.1 Relay access denied", "relay_denied")

    log = RejectionLog(Path("/nonexistent/index.sqlite"), IndexConfig(rejected_queue=1000))
    log._thread = object()  # type: ignore[assignment]  # rows stay on the queue
    session = protocol.SMTPSession(
        protocol.SessionOptions(limits=protocol.Limits(hard_error_limit=50)), Refuse(), "192.0.2.1"
    )
    for chunk in chunks:
        for event in session.receive(chunk):
            if isinstance(event, protocol.Rejection):
                assert event.reason in protocol.REASONS
                log.record("mta", "192.0.2.1", helo + "\r\n\x00", None, event)
        session.data_to_send()
        if session.paused:
            session.message_done(protocol.Reply(451, "4.3.0 x", "local_error"))
    while not log._queue.empty():
        row = log._queue.get_nowait()
        assert not any(c in field for field in row[3:6] for c in "\r\n\x00")
        assert row[8] in REASONS
