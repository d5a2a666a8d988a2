"""Test mail written with the mail server's own index and queue-file format.

Three messages: a genuine one (delivered to a Maildir), a forged one (DMARC fail, From: says
paypal.example while the envelope says elsewhere; delivered), and one deferred in the queue;
and three rejections (an unknown user, a relay attempt, a DMARC policy reject).
"""

from __future__ import annotations

import time
from pathlib import Path

from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queuefile import Envelope, Layout, footer

FORGED_SUBJECT = "Your account is suspended"
GENUINE_SUBJECT = "Minutes of Tuesday's meeting"
DEFERRED_SUBJECT = "Quarterly report"
FORGED_ID = "F0RGED0001"
GENUINE_ID = "GENU1NE002"
DEFERRED_ID = "DEFER00003"
REJECTED_CLIENT = "198.51.100.77"
REJECTED_RECIPIENT = "nobody@test.example"

_PASS = {
    "action": "accept",
    "reason": "",
    "spf": "pass",
    "dkim": "pass",
    "dmarc": "pass",
    "arc": "none",
    "flags": [],
    "header": "Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=example.org;\r\n"
    "\tdkim=pass header.d=example.org; dmarc=pass header.from=example.org",
    "details": {
        "spf": {"result": "pass", "identity": "mailfrom", "domain": "example.org"},
        "dkim": [{"result": "pass", "domain": "example.org", "selector": "s1", "reason": ""}],
        "dmarc": {"result": "pass", "from_domain": "example.org", "policy": "reject"},
        "arc": {"result": "none"},
        "client_ip": "192.0.2.25",
        "mail_from": "alice@example.org",
    },
}
_FORGED = {
    "action": "accept",
    "reason": "dmarc fail (policy none)",
    "spf": "pass",
    "dkim": "none",
    "dmarc": "fail",
    "arc": "none",
    "flags": ["from_envelope_mismatch"],
    "header": "Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=bulk.example;\r\n"
    "\tdkim=none; dmarc=fail header.from=paypal.example",
    "details": {
        "spf": {"result": "pass", "identity": "mailfrom", "domain": "bulk.example"},
        "dkim": [],
        "dmarc": {"result": "fail", "from_domain": "paypal.example", "policy": "reject"},
        "arc": {"result": "none"},
        "client_ip": "203.0.113.66",
        "mail_from": "x@bulk.example",
    },
}


def _message(sender: str, to: str, subject: str, body: str, html: str = "") -> bytes:
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Sat, 28 Nov 2026 03:00:00 +0000\r\nMessage-ID: <x@test>\r\nMIME-Version: 1.0\r\n"
    )
    if not html:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()
    return (
        head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n"
        "--b1\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    ).encode()


def _received(queue_id: str, client: str) -> str:
    return (
        f"Received: from client ([{client}])\r\n\tby mx.test.example (lanalyze) with ESMTP id "
        f"{queue_id}; Sat, 28 Nov 2026 03:00:00 +0000\r\n"
    )


def seed(data_dir: Path, now: float | None = None) -> None:
    now = time.time() if now is None else now
    layout = Layout(data_dir)
    layout.create()
    specs = [
        (
            GENUINE_ID,
            "alice@example.org",
            "Alice <alice@example.org>",
            GENUINE_SUBJECT,
            _PASS,
            "delivered",
            "Hello Bob,\r\nthe minutes are attached.\r\n",
            "",
        ),
        (
            FORGED_ID,
            "x@bulk.example",
            "PayPal <service@paypal.example>",
            FORGED_SUBJECT,
            _FORGED,
            "delivered",
            "Click the link to restore access.\r\n",
            '<p style="color:red">Restore access <img src="http://tracker.example/p.gif">'
            '<script>document.title="pwned"</script></p>',
        ),
        (
            DEFERRED_ID,
            "carol@example.org",
            "Carol <carol@example.org>",
            DEFERRED_SUBJECT,
            _PASS,
            "deferred",
            "Numbers inside.\r\n",
            "",
        ),
    ]
    envelopes = []
    files = []  # (queue id, Maildir path relative to maildirs/) as delivery records them
    for offset, (qid, mail_from, header_from, subject, auth, status, body, html) in enumerate(
        specs
    ):
        message = _message(header_from, "bob@test.example", subject, body, html)
        envelope = Envelope(
            queue_id=qid,
            mail_from=mail_from,
            recipients=["bob@test.example"],
            local={"bob@test.example": ["bob"]},
            relay=[],
            received_at=now - 600 * (offset + 1),
            client_ip=auth["details"]["client_ip"],
            helo="client.example",
            listener="mta",
            prepend=auth["header"] + "\r\n" + _received(qid, auth["details"]["client_ip"]),
            auth=auth,
            header_from=header_from,
            subject=subject,
            size=len(message),
        )
        envelopes.append(envelope)
        if status == "delivered":
            folder = layout.maildirs / "bob" / "new"
            folder.mkdir(parents=True, exist_ok=True)
            data = (f"Return-Path: <{mail_from}>\r\n" + envelope.prepend).encode() + message
            name = f"{int(now)}.{qid}.test"
            (folder / name).write_bytes(data.replace(b"\r\n", b"\n"))
            files.append((qid, f"bob/new/{name}"))
        else:
            envelope.attempts = 2
            envelope.last_error = "bob@test.example: No space left on device"
            path = layout.q("deferred") / qid
            path.write_bytes(message + footer(len(message), envelope.trailer()))
    index = MessageIndex(layout.index)
    try:
        index.record_accepted(envelopes)
        index.record_rejections(
            [
                (
                    now - 300,
                    REJECTED_CLIENT,
                    "mta",
                    "spam.example",
                    "eve@spam.example",
                    REJECTED_RECIPIENT,
                    None,
                    550,
                    "unknown_user",
                    "5.1.1 Recipient address rejected: User unknown",
                ),
                (
                    now - 200,
                    REJECTED_CLIENT,
                    "mta",
                    "spam.example",
                    "eve@spam.example",
                    "victim@far.example",
                    None,
                    554,
                    "relay_denied",
                    "5.7.1 Relay access denied",
                ),
                (
                    now - 100,
                    "203.0.113.66",
                    "mta",
                    "bulk.example",
                    "x@bulk.example",
                    "bob@test.example",
                    None,
                    550,
                    "policy_reject",
                    "5.7.1 DMARC policy of paypal.example: reject",
                ),
            ]
        )
        index.set_status(
            [
                (GENUINE_ID, "delivered", 1, "", ["bob@test.example"]),
                (FORGED_ID, "delivered", 1, "", ["bob@test.example"]),
                (DEFERRED_ID, "deferred", 2, "No space left on device", []),
            ],
            files=files,
        )
    finally:
        index.close()
