"""SRS (Sender Rewriting Scheme): forwarding by alias to other domains and bounces coming back."""

from __future__ import annotations

import smtplib
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from lanalyze.mail.bounce import RecipientResult
from lanalyze.mail.config import MailConfig
from lanalyze.mail.errors import InvalidSRS
from lanalyze.mail.metrics import SRS as SRS_COUNTER
from lanalyze.mail.queuefile import Envelope, read_envelope
from lanalyze.mail.srs import SRS, load_key
from tests.mail.conftest import base_config, run_server

KEY = b"k" * 32
DAY = 86400.0
NOW = 20_000 * DAY + 3600


def srs() -> SRS:
    return SRS(KEY, "example.test", max_age_days=21)


def test_srs0_round_trip() -> None:
    rewritten = srs().forward("Alice@Origin.test", NOW)
    assert rewritten.startswith("SRS0=") and rewritten.endswith("@example.test")
    _, hash_, stamp, domain, local = rewritten.split("@")[0].split("=")
    assert len(hash_) == 4 and len(stamp) == 2 and (domain, local) == ("Origin.test", "Alice")
    assert srs().reverse(rewritten, NOW + 20 * DAY) == "Alice@Origin.test"
    # Some MTAs fold case: the hash and timestamp are compared without it.
    assert srs().reverse(rewritten.upper().replace("EXAMPLE.TEST", "example.test"), NOW)
    # Not rewritten: an empty sender, or one of our SRS addresses.
    assert srs().forward("", NOW) == ""
    assert srs().forward(rewritten, NOW) == rewritten


def test_srs1_for_another_forwarders_address() -> None:
    theirs = SRS(b"t" * 32, "fwd.test").forward("alice@origin.test", NOW)
    ours = srs().forward(theirs, NOW)
    assert ours.startswith("SRS1=") and "=fwd.test==" in ours and ours.endswith("@example.test")
    # Reversal goes back to the other forwarder's SRS0 address, which it reverses.
    assert srs().reverse(ours, NOW) == theirs
    # A second hop through us keeps the first forwarder (SRS1 stays one hop long).
    again = SRS(KEY, "example.test").forward(ours.replace("@example.test", "@hop2.test"), NOW)
    assert "=fwd.test==" in again and srs().reverse(again, NOW) == theirs


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.replace("SRS0=", "SRS0=X", 1),  # hash changed
        lambda a: a.replace("Origin.test", "evil.test"),  # the address changed
        lambda a: a.replace("@example.test", "@other.test"),  # not our domain
        lambda a: "SRS0=abc@example.test",  # syntax
        lambda a: "SRS1=abcd=x.test@example.test",  # syntax
        lambda a: "alice@example.test",  # not SRS
    ],
)
def test_forged_addresses_are_refused(mutate: object) -> None:
    address = srs().forward("alice@Origin.test", NOW)
    with pytest.raises(InvalidSRS):
        srs().reverse(mutate(address), NOW)  # type: ignore[operator]


def test_expired_address_is_refused() -> None:
    address = srs().forward("alice@origin.test", NOW)
    assert srs().reverse(address, NOW + 21 * DAY)
    with pytest.raises(InvalidSRS, match="expired"):
        srs().reverse(address, NOW + 22 * DAY)


def test_key_created_on_first_use_0600(tmp_path: Path) -> None:
    path = tmp_path / "srs.key"
    lazy = SRS(path, "example.test")
    assert not path.exists()  # inert constructor
    rewritten = lazy.forward("a@origin.test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == lazy.key
    # Another process (a new object) reads the same key and reverses it.
    assert SRS(path, "example.test").reverse(rewritten) == "a@origin.test"


def test_alias_configuration_rules() -> None:
    MailConfig.model_validate(base_config(aliases={"fwd@example.test": ["dave@remote.test"]}))
    with pytest.raises(ValidationError, match=r"not one of mail\.mailboxes"):
        MailConfig.model_validate(base_config(aliases={"x@example.test": ["typo@example.test"]}))
    with pytest.raises(ValidationError, match="not an address"):
        MailConfig.model_validate(base_config(aliases={"x@example.test": ["@remote.test"]}))
    with pytest.raises(ValidationError, match=r"mail\.srs\.domain"):
        MailConfig.model_validate(base_config(srs={"domain": "elsewhere.test"}))


def queued(running: object, queue_id: str) -> Envelope:
    """The envelope of a queued message, wherever it is (delivery may move it meanwhile)."""
    for _ in range(100):
        path = running.server.layout.find(queue_id)  # type: ignore[attr-defined]
        assert path is not None
        try:
            return read_envelope(path)[0]
        except FileNotFoundError:
            continue  # moved between find and read: look again
    raise AssertionError(f"{queue_id} keeps moving")


def send(port: int, mail_from: str, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        code, _ = client.rcpt(rcpt)
        assert code == 250
        code, reply = client.data(b"Subject: fwd\r\n\r\nhello\r\n")
        assert code == 250
        return reply.decode().rsplit(" ", 1)[-1]


def test_forwarding_and_bounce_round_trip(data_dir: Path) -> None:
    """An outside client (not trusted) mails an alias that forwards to another domain: the
    envelope sender is rewritten, the target goes to relay; a bounce to the SRS address
    comes back from anywhere and is relayed to the original sender; a forged one is
    refused with 550."""
    aliases = {
        "postmaster@example.test": ["alice@example.test"],
        "fwd@example.test": ["dave@remote.test", "bob@example.test"],
    }
    rewritten_before = SRS_COUNTER.labels("rewritten")._value.get()
    with run_server(data_dir, aliases=aliases) as running:
        port = running.port()
        forwarded = queued(running, send(port, "carol@origin.test", "fwd@example.test"))
        assert forwarded.relay == ["dave@remote.test"]
        assert forwarded.local == {"fwd@example.test": ["bob@example.test"]}
        assert forwarded.mail_from.startswith("SRS0=")
        assert forwarded.mail_from.endswith("@example.test")
        assert forwarded.extra["srs_from"] == "carol@origin.test"
        assert forwarded.extra["forwarded"] == {"dave@remote.test": "fwd@example.test"}
        assert SRS_COUNTER.labels("rewritten")._value.get() == rewritten_before + 1
        # The local copy is delivered; its Return-Path is the SRS address (as postsrsd's).
        [copy] = running.wait_delivered(1, "bob@example.test")
        assert copy.startswith(f"Return-Path: <{forwarded.mail_from}>".encode())

        reversed_before = SRS_COUNTER.labels("reversed")._value.get()
        bounce = queued(running, send(port, "", forwarded.mail_from))
        assert bounce.relay == ["carol@origin.test"] and bounce.mail_from == ""
        assert SRS_COUNTER.labels("reversed")._value.get() == reversed_before + 1

        # Our own DSN to the SRS address goes the same way (pickup routes as cleanup).
        bouncer = running.server.bouncer
        assert bouncer is not None
        [dsn_id] = bouncer.report(
            forwarded,
            b"Subject: fwd\r\n\r\nhello\r\n",
            [RecipientResult("dave@remote.test", "failed", "5.1.1", "smtp; 550 no")],
        )
        assert queued(running, dsn_id).relay == ["carol@origin.test"]

        invalid_before = SRS_COUNTER.labels("invalid")._value.get()
        forged = forwarded.mail_from.replace("=origin.test=", "=victim.test=")
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("client.test")
            client.mail("")
            code, reply = client.rcpt(forged)
        assert code == 550 and b"invalid SRS address" in reply
        assert SRS_COUNTER.labels("invalid")._value.get() == invalid_before + 1
        # Mail from our own domains keeps its sender (SPF passes for it anyway).
        own = queued(running, send(port, "alice@example.test", "fwd@example.test"))
        assert own.mail_from == "alice@example.test" and own.relay == ["dave@remote.test"]


def test_srs_off_forwards_without_rewriting(data_dir: Path) -> None:
    with run_server(
        data_dir,
        aliases={"fwd@example.test": ["dave@remote.test"]},
        srs={"enabled": False},
    ) as running:
        envelope = queued(running, send(running.port(), "carol@origin.test", "fwd@example.test"))
    assert envelope.mail_from == "carol@origin.test" and envelope.relay == ["dave@remote.test"]
    assert not (data_dir / "mail" / "srs.key").exists()
