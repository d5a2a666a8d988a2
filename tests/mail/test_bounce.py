"""DSNs (RFC 3464) from the bouncer, queued by pickup and delivered by the real local delivery.

The delivery results are made up here (the outbound client that produces them in production
is another stage); everything after them is the real path: the bouncer, pickup's durable
queue file, the Maildir delivery, and Python's ``email`` parsing what arrived.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import time
from pathlib import Path

import pytest

from lanalyze.mail.bounce import DSNBouncer, RecipientResult
from lanalyze.mail.config import BounceConfig, MailConfig
from lanalyze.mail.delivery.maildir import MaildirDelivery
from lanalyze.mail.metrics import DSN_SUPPRESSED, DSNS
from lanalyze.mail.pickup import Pickup
from lanalyze.mail.queuefile import Envelope, Layout, read_envelope
from lanalyze.mail.users import Directory
from tests.mail.conftest import base_config, run_server

ORIGINAL = (
    b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\nSubject: lunch\r\n"
    b"Message-ID: <orig-1@example.test>\r\n\r\nSee you at noon.\r\n"
)
FAILED = RecipientResult(
    "carol@remote.test",
    "failed",
    "5.1.1",
    "smtp; 550 5.1.1 <carol@remote.test>: no such user",
    "mx.remote.test",
)


class World:
    """A data directory with its queue, a bouncer and the local delivery agent."""

    def __init__(self, data_dir: Path, **bounce: object) -> None:
        self.layout = Layout(data_dir)
        self.layout.create()
        config = MailConfig.model_validate(base_config(bounce=bounce))
        directory = Directory(config)
        self.pickup = Pickup(self.layout, directory, "mx.example.test")
        self.bouncer = DSNBouncer(
            config.bounce, self.pickup, "mx.example.test", directory.postmaster
        )
        self.delivery = MaildirDelivery(self.layout)

    def deliver(self) -> None:
        active = self.layout.q("active")
        paths = [str(p) for p in sorted(active.iterdir())]
        outcomes = self.delivery.deliver_batch(paths)
        assert all(o.status == "delivered" for o in outcomes), outcomes

    def mailbox(self, address: str = "alice@example.test") -> list[email.message.Message]:
        new = self.layout.maildirs / address / "new"
        if not new.is_dir():
            return []
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.compat32)
            for p in sorted(new.iterdir())
        ]


def envelope(mail_from: str = "alice@example.test", **fields: object) -> Envelope:
    base = Envelope(
        queue_id="ORIG1",
        mail_from=mail_from,
        recipients=["carol@remote.test"],
        local={},
        relay=["carol@remote.test"],
        received_at=time.time() - 3600,
        client_ip="127.0.0.1",
        helo="client.test",
        listener="submission",
        prepend="Received: from client.test by mx.example.test; Thu, 3 Dec 2026 10:00:00 GMT\r\n",
    )
    for key, value in fields.items():
        setattr(base, key, value)
    return base


def parts(report: email.message.Message) -> tuple[str, list[email.message.Message], object]:
    """(human text, the delivery-status blocks, the returned part) of a multipart/report."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    payload = report.get_payload()
    assert isinstance(payload, list) and len(payload) == 3
    human, status, returned = payload
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return human.get_payload(), blocks, returned


def test_failure_report_reaches_the_senders_mailbox(data_dir: Path) -> None:
    world = World(data_dir)
    env = envelope(
        envid="ENV 42",
        dsn={"carol@remote.test": {"notify": ["FAILURE"], "orcpt": "rfc822;Carol@remote.test"}},
    )
    before = DSNS.labels("failure")._value.get()
    ids = world.bouncer.report(env, ORIGINAL, [FAILED])
    assert len(ids) == 1
    queued, _ = read_envelope(world.layout.q("active") / ids[0])
    assert queued.mail_from == "" and queued.recipients == ["alice@example.test"]
    assert queued.extra == {"dsn": "failure", "original": "ORIG1"}
    world.deliver()
    [report] = world.mailbox()
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert report["To"] == "<alice@example.test>"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["Return-Path"] == "<>"  # the null envelope sender, as delivered
    human, blocks, returned = parts(report)
    assert "carol@remote.test" in str(human) and "no such user" in str(human)
    per_message, per_recipient = blocks
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Original-Envelope-Id"] == "ENV+2042"  # xtext (RFC 3464 §2.2.1)
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) is not None
    assert per_recipient["Final-Recipient"] == "rfc822; carol@remote.test"
    assert per_recipient["Original-Recipient"] == "rfc822; Carol@remote.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.remote.test"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <carol@remote.test>: no such user"
    assert email.utils.parsedate_to_datetime(per_recipient["Last-Attempt-Date"]) is not None
    assert per_recipient["Will-Retry-Until"] is None
    # RET not given: the whole original comes back, with the Received: line it was queued with.
    assert returned.get_content_type() == "message/rfc822"
    [inner] = returned.get_payload()
    assert inner["Subject"] == "lunch" and inner["Received"].startswith("from client.test")
    assert "See you at noon." in inner.get_payload()
    assert DSNS.labels("failure")._value.get() == before + 1


def test_ret_hdrs_and_the_return_limit_return_headers_only(data_dir: Path) -> None:
    world = World(data_dir, return_limit=2048)
    world.bouncer.report(envelope(ret="HDRS"), ORIGINAL, [FAILED])
    big = ORIGINAL + b"x" * 3000 + b"\r\n"
    world.bouncer.report(envelope(ret="FULL"), big, [FAILED])
    world.bouncer.report(envelope(ret="FULL"), ORIGINAL, [FAILED])
    world.deliver()
    returned = [parts(r)[2] for r in world.mailbox()]
    types = sorted(r.get_content_type() for r in returned)  # type: ignore[attr-defined]
    assert types == ["message/rfc822", "text/rfc822-headers", "text/rfc822-headers"]
    for part in returned:
        if part.get_content_type() == "text/rfc822-headers":  # type: ignore[attr-defined]
            text = part.get_payload()  # type: ignore[attr-defined]
            assert "Subject: lunch" in text and "noon" not in text and "xxx" not in text


def test_notify_never_success_and_delay(data_dir: Path) -> None:
    world = World(data_dir, delay_warning=False)
    never = envelope(dsn={"carol@remote.test": {"notify": ["NEVER"]}})
    suppressed = DSN_SUPPRESSED.labels("notify")._value.get()
    assert world.bouncer.report(never, ORIGINAL, [FAILED]) == []
    assert DSN_SUPPRESSED.labels("notify")._value.get() == suppressed + 1
    delivered = RecipientResult("carol@remote.test", "delivered", "2.0.0", "smtp; 250 ok", "mx")
    relayed = RecipientResult("carol@remote.test", "relayed", "2.0.0", "", "mx.remote.test")
    # Success is reported only when asked for.
    assert world.bouncer.report(envelope(), ORIGINAL, [delivered]) == []
    asked = envelope(dsn={"carol@remote.test": {"notify": ["SUCCESS"]}})
    assert len(world.bouncer.report(asked, ORIGINAL, [delivered])) == 1
    assert len(world.bouncer.report(asked, ORIGINAL, [relayed])) == 1
    # Delay: without NOTIFY only when mail.bounce.delay_warning (off here); NOTIFY=DELAY once.
    delayed = RecipientResult("carol@remote.test", "delayed", "4.4.1", "smtp; 421 busy", "mx")
    assert world.bouncer.report(envelope(), ORIGINAL, [delayed]) == []
    wants = envelope(dsn={"carol@remote.test": {"notify": ["DELAY"]}})
    assert len(world.bouncer.report(wants, ORIGINAL, [delayed])) == 1
    assert wants.delay_warned
    assert world.bouncer.report(wants, ORIGINAL, [delayed]) == []  # once per message
    # NOTIFY=DELAY alone: a failure is not reported.
    assert world.bouncer.report(wants, ORIGINAL, [FAILED]) == []
    world.deliver()
    reports = world.mailbox()
    actions = sorted(parts(r)[1][1]["Action"] for r in reports)
    assert actions == ["delayed", "delivered", "relayed"]
    for report in reports:
        _, blocks, returned = parts(report)
        assert returned.get_content_type() == "text/rfc822-headers"  # type: ignore[attr-defined]
        if blocks[1]["Action"] == "delayed":
            assert report["Subject"] == "Delayed Mail (still being retried)"
            assert email.utils.parsedate_to_datetime(blocks[1]["Will-Retry-Until"]) is not None
        else:
            assert report["Subject"] == "Successful Mail Delivery Report"


def test_default_notify_gets_a_delay_warning(data_dir: Path) -> None:
    world = World(data_dir)  # mail.bounce.delay_warning defaults to true
    delayed = RecipientResult("carol@remote.test", "delayed", "4.4.1", "", None)
    assert len(world.bouncer.report(envelope(), ORIGINAL, [delayed])) == 1


def test_double_bounce_reaches_postmaster_once_and_a_failed_one_is_dropped(
    data_dir: Path,
) -> None:
    world = World(data_dir)
    bounce = envelope(mail_from="", extra={"dsn": "failure"})
    before = DSNS.labels("double_bounce")._value.get()
    [queue_id] = world.bouncer.report(bounce, ORIGINAL, [FAILED])
    assert bounce.extra["double_bounced"] is True
    assert world.bouncer.report(bounce, ORIGINAL, [FAILED]) == []  # once per message
    # A delay of a null-sender message is never reported to anyone.
    delayed = RecipientResult("carol@remote.test", "delayed", "4.4.1", "", None)
    assert world.bouncer.report(envelope(mail_from=""), ORIGINAL, [delayed]) == []
    # The double bounce itself failing: dropped, logged, counted.
    double, _ = read_envelope(world.layout.q("active") / queue_id)
    assert double.recipients == ["postmaster@example.test"] and double.mail_from == ""
    dropped = DSN_SUPPRESSED.labels("double_bounce_failed")._value.get()
    lost = RecipientResult("postmaster@example.test", "failed", "5.2.2", "mailbox full", None)
    assert world.bouncer.report(double, ORIGINAL, [lost]) == []
    assert DSN_SUPPRESSED.labels("double_bounce_failed")._value.get() == dropped + 1
    assert DSNS.labels("double_bounce")._value.get() == before + 1
    world.deliver()
    # postmaster@example.test is an alias of alice in the test configuration.
    [report] = world.mailbox()
    assert report["To"] == "<postmaster@example.test>"
    assert "double bounce" in report["Subject"]
    assert parts(report)[1][1]["Final-Recipient"] == "rfc822; carol@remote.test"


def test_hostile_reply_text_cannot_add_fields_or_end_parts(data_dir: Path) -> None:
    world = World(data_dir)
    evil = RecipientResult(
        "carol@remote.test",
        "failed",
        "5.0.0\r\nAction: delivered",
        "smtp; 550 no\r\nFinal-Recipient: rfc822; x@y\r\n\r\n--",
        "mx\r\nX-Evil: 1",
    )
    world.bouncer.report(envelope(), ORIGINAL, [evil])
    world.deliver()
    [report] = world.mailbox()
    blocks = parts(report)[1]
    assert len(blocks) == 2
    assert blocks[1].get_all("Final-Recipient") == ["rfc822; carol@remote.test"]
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1]["X-Evil"] is None


def test_server_bouncer_delivers_through_its_queue_manager(data_dir: Path) -> None:
    """The running server's bouncer: pickup hands the file to the queue manager."""
    with run_server(data_dir) as running:
        bouncer = running.server.bouncer
        assert bouncer is not None
        assert len(bouncer.report(envelope(), ORIGINAL, [FAILED])) == 1
        [raw] = running.wait_delivered(1)
    report = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parts(report)[1][1]["Status"] == "5.1.1"


def test_pickup_refuses_bad_addresses(data_dir: Path) -> None:
    world = World(data_dir)
    with pytest.raises(ValueError):
        world.pickup.queue(b"x\r\n", "", [])
    with pytest.raises(ValueError):
        world.pickup.queue(b"x\r\n", "", ["bad address@x"])
    assert list(world.layout.q("active").iterdir()) == []


def test_bounce_config_defaults() -> None:
    config = BounceConfig()
    assert config.delay_warning and config.return_limit == 51_200 and config.postmaster == ""
