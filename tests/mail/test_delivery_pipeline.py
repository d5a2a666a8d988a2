"""Accept -> cleanup -> queue -> Maildir, in process, with smtplib as the client."""

from __future__ import annotations

import smtplib

from tests.mail.conftest import RunningServer


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
