"""RFC 3461 parameters (NOTIFY, ORCPT, RET, ENVID): the core's parsing, fuzzing, a real client."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.errors import AddressError
from lanalyze.mail.smtp.dsn import (
    parse_notify,
    parse_orcpt,
    rcpt_dsn,
    xtext_decode,
    xtext_encode,
)
from lanalyze.mail.smtp.protocol import MessageBegin
from tests.mail.conftest import run_server
from tests.mail.test_smtp_protocol import Driver, codes
from tests.mail.test_srs import queued


def begin(d: Driver) -> MessageBegin:
    found = [e for e in d.events if isinstance(e, MessageBegin)]
    assert found
    return found[-1]


def test_ehlo_advertises_dsn() -> None:
    d = Driver()
    assert b"250-DSN\r\n" in d.feed(b"EHLO c\r\n") or b"250 DSN\r\n" in d.out


def test_parameters_reach_the_message_begin_decoded() -> None:
    d = Driver()
    out = d.feed(
        b"EHLO c\r\nMAIL FROM:<a@x> RET=hdrs ENVID=QQ+2B1+3D2\r\n"
        b"RCPT TO:<b@y> NOTIFY=delay,FAILURE ORCPT=rfc822;b+2Bold@y\r\n"
        b"RCPT TO:<c@y> NOTIFY=NEVER\r\nRCPT TO:<d@y>\r\nDATA\r\n"
    )
    assert codes(out) == [250, 250, 250, 250, 250, 354]
    event = begin(d)
    assert event.ret == "HDRS" and event.envid == "QQ+1=2"
    assert event.dsn == {
        "b@y": {"notify": ["FAILURE", "DELAY"], "orcpt": "rfc822;b+old@y"},
        "c@y": {"notify": ["NEVER"]},
    }
    # The next transaction starts clean.
    d.feed(b"x\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    event = begin(d)
    assert event.ret is None and event.envid is None and event.dsn == {}


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<a@x> RET=ALL",
        b"MAIL FROM:<a@x> RET=",
        b"MAIL FROM:<a@x> ENVID=a+zz",
        b"MAIL FROM:<a@x> ENVID=a+0Ab",  # a control character once decoded
        b"MAIL FROM:<a@x> ENVID=" + b"x" * 101,
        b"MAIL FROM:<a@x> ENVID=",
    ],
)
def test_bad_mail_parameters_get_501_5_5_4(command: bytes) -> None:
    d = Driver()
    out = d.feed(b"EHLO c\r\n" + command + b"\r\nRCPT TO:<b@y>\r\n")
    assert out.split(b"\r\n")[-3].startswith(b"501 5.5.4 ")
    assert codes(out)[-1] == 503  # no transaction was started


@pytest.mark.parametrize(
    "params",
    [
        b"NOTIFY=NEVER,FAILURE",
        b"NOTIFY=SOMETIMES",
        b"NOTIFY=",
        b"NOTIFY=FAILURE,FAILURE",
        b"ORCPT=b@y",
        b"ORCPT=;b@y",
        b"ORCPT=rfc822;",
        b"ORCPT=rf/c822;b@y",
        b"ORCPT=rfc822;b+0D+0A@y",
        b"ORCPT=rfc822;" + b"b" * 500,
        b"ORCPT=rfc822;+FF@y",  # not UTF-8
    ],
)
def test_bad_rcpt_parameters_get_501_5_5_4(params: bytes) -> None:
    d = Driver()
    out = d.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y> " + params + b"\r\nDATA\r\n")
    lines = out.split(b"\r\n")
    assert lines[-3].startswith(b"501 5.5.4 "), lines
    assert codes(out)[-1] == 503  # the recipient was not added


def test_xtext_round_trip_and_rules() -> None:
    assert xtext_decode("a+2Bb+3d") == b"a+b="
    assert xtext_encode("a+b= é\x01") == "a+2Bb+3D+20+C3+A9+01"
    for bad in ("a=b", "a b", "+2", "+G0", "é"):
        with pytest.raises(AddressError):
            xtext_decode(bad)
    assert parse_notify("failure,success") == ["SUCCESS", "FAILURE"]
    assert parse_orcpt("utf-8;b+40@y") == "utf-8;b@@y"
    assert rcpt_dsn({}) is None


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_fuzz_xtext_round_trip(value: str) -> None:
    encoded = xtext_encode(value)
    assert xtext_decode(encoded) == value.encode("utf-8", "surrogateescape")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["NOTIFY", "ORCPT", "RET", "ENVID"]).flatmap(
            lambda key: st.text(
                st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=60
            ).map(lambda value: f"{key}={value}".replace(" ", ""))
        ),
        max_size=3,
    )
)
def test_fuzz_parameters_never_raise(params: list[str]) -> None:
    """Whatever the values: a 250 or a 5xx, never an exception; an accepted value holds no
    control character (it is written back into a DSN's header fields)."""
    mail = [p for p in params if p.startswith(("RET", "ENVID"))]
    rcpt = [p for p in params if p.startswith(("NOTIFY", "ORCPT"))]
    d = Driver()
    line = "EHLO c\r\nMAIL FROM:<a@x> " + " ".join(mail) + "\r\nRCPT TO:<b@y> "
    out = d.feed((line + " ".join(rcpt) + "\r\nDATA\r\n").encode("utf-8"))
    assert all(code in (250, 354, 501, 503, 555) for code in codes(out))
    for event in d.events:
        if isinstance(event, MessageBegin):
            assert (event.envid or "").isprintable()
            for values in event.dsn.values():
                assert str(values.get("orcpt", "")).isprintable()


def test_real_client_parameters_land_in_the_envelope(data_dir: Path) -> None:
    """smtplib against the server on loopback: RET/ENVID/NOTIFY/ORCPT in the queue file.

    The recipients are on a remote domain (relayed for the trusted loopback client), so the
    queue file stays on disk (hold, or deferred once outbound delivery tries) to be read."""
    with run_server(data_dir, trusted_networks=["127.0.0.0/8"]) as running:
        with smtplib.SMTP("127.0.0.1", running.port()) as client:
            client.ehlo("client.test")
            assert client.has_extn("dsn")
            client.mail("sender@example.test", ["RET=HDRS", "ENVID=env+2B42"])
            code, _ = client.rcpt(
                "carol@remote.invalid",
                ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;carol+2Bx@remote.invalid"],
            )
            assert code == 250
            code, reply = client.rcpt("dave@remote.invalid", ["NOTIFY=MAYBE"])
            assert code == 501 and reply.startswith(b"5.5.4")
            assert client.rcpt("dave@remote.invalid", ["NOTIFY=NEVER"])[0] == 250
            code, reply = client.data(b"Subject: dsn\r\n\r\nhello\r\n")
            assert code == 250
            queue_id = reply.decode().rsplit(" ", 1)[-1]
        envelope = queued(running, queue_id)
    assert envelope.ret == "HDRS" and envelope.envid == "env+42"
    assert envelope.dsn == {
        "carol@remote.invalid": {
            "notify": ["SUCCESS", "FAILURE"],
            "orcpt": "rfc822;carol+x@remote.invalid",
        },
        "dave@remote.invalid": {"notify": ["NEVER"]},
    }
