"""Accept -> cleanup -> queue -> Maildir, in process, with smtplib as the client."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.mail.conftest import RunningServer, run_server


def test_smtplib_message_is_queued_and_delivered(mail_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mail_server.port(), timeout=10) as client:
        code, _banner = client.ehlo("client.test")
        assert code == 250
        reply = client.sendmail(
            "sender@remote.test",
            ["alice@example.test"],
            b"From: Sender <sender@remote.test>\r\nSubject: hello\r\n\r\n.line\r\nbody\r\n",
        )
        assert reply == {}
    [message] = mail_server.wait_delivered(1)
    assert message.startswith(
        b"Return-Path: <sender@remote.test>\nDelivered-To: alice@example.test\n"
        b"Received: from client.test ([127.0.0.1])\n\tby mx.example.test (lanalyze) with ESMTP"
    )
    assert message.endswith(b"Subject: hello\n\n.line\nbody\n")


class FakeVerdict:
    def __init__(self, action: str, message: bytes) -> None:
        self.action = action
        self.reason = "DMARC policy of forged.test says reject"
        self.header = b"Authentication-Results: mx.example.test; dmarc=fail\r\n"
        start = message.find(b"Authentication-Results: mx.example.test; forged")
        end = message.find(b"\r\n", start) + 2
        self.strip_headers = [(start, end)] if start >= 0 else []

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "dmarc": {"result": "fail"}}


class FakeAuthenticator:
    """Stands in for lanalyze.mail.auth: the verdict comes from the Subject line."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    async def check(self, message, **envelope):  # type: ignore[no-untyped-def]
        # The hook hands over the message's bytes (exactly what is queued), not a path.
        self.calls.append(envelope)
        action = "reject" if b"Subject: reject" in message else "quarantine"
        return FakeVerdict(action, message)

    async def stop(self) -> None:
        return None


def test_auth_hook_reject_quarantine_and_stripping(data_dir: Path) -> None:
    with run_server(data_dir) as running:
        fake = FakeAuthenticator()

        def install() -> None:
            running.server.auth._impl = fake
            running.server.auth.enabled = True

        running.call(install)
        with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(
                    "x@forged.test", ["alice@example.test"], b"Subject: reject\r\n\r\nx\r\n"
                )
            assert refused.value.smtp_code == 550
            assert refused.value.smtp_error.startswith(b"5.7.1 DMARC policy")
            client.sendmail(
                "x@forged.test",
                ["alice@example.test"],
                b"Authentication-Results: mx.example.test; forged=pass\r\n"
                b"Subject: suspicious\r\n\r\nbody\r\n",
            )
        [junk] = running.wait_delivered(1, folder=".Junk")
        assert running.messages() == []
        assert b"Authentication-Results: mx.example.test; dmarc=fail\n" in junk
        assert b"forged=pass" not in junk
        assert (running.maildirs / "alice@example.test" / ".Junk" / "maildirfolder").exists()
        assert fake.calls[0]["mail_from"] == "x@forged.test"
        assert fake.calls[0]["rcpt_to"] == ["alice@example.test"]


def test_large_message_streams_to_disk_and_reads_as_maildir(data_dir: Path) -> None:
    import mailbox

    body = b"".join(b"line %07d of a large message\r\n" % n for n in range(80_000))  # ~2.5 MB
    with run_server(data_dir, spool_memory=65536) as running:
        with smtplib.SMTP("127.0.0.1", running.port(), timeout=30) as client:
            client.sendmail(
                "big@remote.test",
                ["alice@example.test"],
                b"From: big@remote.test\r\nSubject: large\r\n\r\n" + body,
            )
        running.wait_delivered(1)
    box = mailbox.Maildir(data_dir / "mail" / "maildirs" / "alice@example.test", create=False)
    [message] = list(box)
    assert message["Subject"] == "large"
    assert message["Return-Path"] == "<big@remote.test>"
    payload = message.get_payload(decode=False)
    assert payload == body.replace(b"\r\n", b"\n").decode()


def test_bdat_and_smtputf8_over_a_socket(mail_server: RunningServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", mail_server.port()), timeout=10) as conn:
        conn.recv(200)
        chunk = "Subject: grüße\r\n\r\nüber\r\n".encode()
        conn.sendall(
            "EHLO c\r\nMAIL FROM:<jörg@bücher.test> SMTPUTF8 BODY=8BITMIME\r\n"
            "RCPT TO:<alice@example.test>\r\n".encode()
            + b"BDAT %d LAST\r\n" % len(chunk)
            + chunk
            + b"QUIT\r\n"
        )
        data = b""
        while b"221 " not in data:
            received = conn.recv(4096)
            if not received:
                break
            data += received
    assert b"queued as" in data, data
    [message] = mail_server.wait_delivered(1)
    assert "Return-Path: <jörg@bücher.test>".encode() in message
    assert message.endswith("Subject: grüße\n\nüber\n".encode())
