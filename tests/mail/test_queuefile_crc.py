"""A queue file whose message bytes do not match the CRC-32 in its trailer is never delivered.

With ``mail.sync = syncfs`` a batch is renamed into ``queue/active/`` before the one flush
that makes it durable; a power cut inside that window can leave a file with missing data
there (never acknowledged). The CRC catches it; here the damage is simulated by flipping
one byte of the message.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from lanalyze.mail.delivery.maildir import MaildirDelivery
from lanalyze.mail.queuefile import Envelope, Layout, footer


def _queue_file(layout: Layout, queue_id: str, message: bytes) -> Path:
    envelope = Envelope(
        queue_id=queue_id,
        mail_from="a@remote.test",
        recipients=["alice@example.test"],
        local={"alice@example.test": ["alice@example.test"]},
        relay=[],
        received_at=0.0,
        client_ip="127.0.0.1",
        helo="client",
        listener="mta",
        size=len(message),
        crc32=zlib.crc32(message),
    )
    path = layout.q("active") / queue_id
    path.write_bytes(message + footer(len(message), envelope.trailer()))
    return path


def test_damaged_message_goes_to_corrupt_not_to_the_mailbox(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    message = b"Subject: hi\r\n\r\nhello\r\n"
    good = _queue_file(layout, "GOOD1", message)
    bad = _queue_file(layout, "BAD1", message)
    raw = bytearray(bad.read_bytes())
    raw[len(b"Subject: hi\r\n\r\n")] = 0  # a block the power cut never wrote
    bad.write_bytes(bytes(raw))

    outcomes = MaildirDelivery(layout).deliver_batch([str(good), str(bad)])

    status = {o.queue_id: o.status for o in outcomes}
    assert status == {"GOOD1": "delivered", "BAD1": "corrupt"}
    assert "CRC-32" in next(o.error for o in outcomes if o.queue_id == "BAD1")
    assert (layout.q("corrupt") / "BAD1").exists()
    delivered = list((layout.maildirs / "alice@example.test" / "new").iterdir())
    assert len(delivered) == 1
    assert delivered[0].read_bytes().endswith(b"hello\n")
