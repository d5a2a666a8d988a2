"""The sans-IO SMTP client core (mail/smtp/client.py) and the MX ordering of nexthop.py."""

from __future__ import annotations

import pytest

from lanalyze.mail.config import OutboundConfig
from lanalyze.mail.delivery.nexthop import _ordered_mx, route
from lanalyze.mail.errors import ReplyError
from lanalyze.mail.smtp.client import (
    ClientCore,
    Extensions,
    Prepared,
    ReplyParser,
    Unsendable,
    dot_stuff,
    prepare,
    xtext,
)

EHLO = (
    b"250-mx.example.net Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-CHUNKING\r\n250-DSN\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
)


def test_replies_are_the_same_for_any_split() -> None:
    stream = b"220 hi\r\n" + EHLO + b"550 5.1.1 no such user\r\n"
    whole = ReplyParser().feed(stream)
    assert [r.code for r in whole] == [220, 250, 550]
    assert whole[2].status == "5.1.1" and whole[2].text == "550 5.1.1 no such user"
    for cut in range(1, len(stream)):
        parser = ReplyParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == whole


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"250x\r\n", b"99 x\r\n", b"250-a\r\n251 b\r\n", b"250 " + b"x" * 5000],
)
def test_bad_replies_raise(data: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyParser().feed(data)


def test_too_many_lines_raise() -> None:
    with pytest.raises(ReplyError):
        ReplyParser().feed(b"250-x\r\n" * 200)


def test_extensions_and_tagged_replies() -> None:
    core = ClientCore("out.example.test")
    assert core.receive(b"220 hi\r\n")[0].tag == "greeting"
    assert core.ehlo() == b"EHLO out.example.test\r\n"
    core.receive(EHLO)
    ext = core.ext
    assert (ext.pipelining, ext.size, ext.eightbit, ext.smtputf8, ext.chunking) == (
        True,
        1000,
        True,
        True,
        True,
    )
    assert ext.dsn and ext.starttls and ext.auth == {"PLAIN", "LOGIN"}
    out = core.mail("a@b", ("SIZE=10",)) + core.rcpt("x@y", ["SUCCESS", "FAILURE"], "rfc822;x@y")
    out += core.rcpt("z+1@y", None, None)
    assert out == (
        b"MAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y\r\n"
        b"RCPT TO:<z+1@y>\r\n"
    )
    events = core.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n")
    assert [(e.tag, e.arg, e.reply.code) for e in events] == [
        ("mail", "", 250),
        ("rcpt", "x@y", 250),
        ("rcpt", "z+1@y", 550),
    ]
    with pytest.raises(ReplyError):
        core.receive(b"250 unasked\r\n")


def test_dot_stuffing_and_xtext() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no end") == b"no end\r\n.\r\n"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"


def test_prepare_decides_per_server() -> None:
    full = Extensions(esmtp=True, size=100, eightbit=True, smtputf8=True, dsn=True)
    plain = Extensions(esmtp=True)
    ascii_msg = b"Subject: x\r\n\r\nbody\r\n"
    eight_body = b"Subject: x\r\n\r\nb\xc3\xa9\r\n"
    eight_head = b"Subject: \xc3\xa9\r\n\r\nb\r\n"
    result = prepare(ascii_msg, "a@b", ["c@d"], full, ret="HDRS", envid="id 1")
    assert result == Prepared(ascii_msg, (f"SIZE={len(ascii_msg)}", "RET=HDRS", "ENVID=id+201"))
    assert prepare(b"x" * 200, "a@b", ["c@d"], full) == Unsendable(
        "5.3.4", "message larger than the server's limit (100 bytes)"
    )
    eight = prepare(eight_body, "a@b", ["c@d"], full)
    assert isinstance(eight, Prepared) and "BODY=8BITMIME" in eight.mail_params
    downgraded = prepare(eight_body, "a@b", ["c@d"], plain)
    assert isinstance(downgraded, Prepared) and downgraded.data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in downgraded.data
    assert b"b=C3=A9" in downgraded.data
    unsendable = prepare(eight_head, "a@b", ["c@d"], plain)
    assert isinstance(unsendable, Unsendable) and unsendable.status == "5.6.7"
    utf8 = prepare(ascii_msg, "a@b", ["j\u00f6rg@d"], full)
    assert isinstance(utf8, Prepared) and "SMTPUTF8" in utf8.mail_params
    refused = prepare(ascii_msg, "a@b", ["j\u00f6rg@d"], plain)
    assert isinstance(refused, Unsendable) and refused.status == "5.6.7"


def test_mx_order_by_preference_random_among_equals() -> None:
    records = ((20, "c.example"), (10, "b.example"), (10, "a.example."), (30, "d.example"))
    seen = set()
    for _ in range(50):
        order = _ordered_mx(records)
        assert set(order[:2]) == {"a.example", "b.example"} and order[2:] == [
            "c.example",
            "d.example",
        ]
        seen.add(tuple(order[:2]))
    assert len(seen) == 2  # both orders of the equal preferences occur


def test_routes() -> None:
    config = OutboundConfig(transports={"fixed.test": "[10.0.0.5]:2525", "mx.test": "smart.test"})
    assert route("x.test", config).key == "x.test:25:mx"
    fixed = route("fixed.test", config)
    assert (fixed.name, fixed.port, fixed.mx) == ("10.0.0.5", 2525, False)
    assert route("mx.test", config).mx
    relayed = route("x.test", OutboundConfig(relay_host="[smtp.example.net]:587"))
    assert (relayed.name, relayed.port, relayed.mx, relayed.relay) == (
        "smtp.example.net",
        587,
        False,
        True,
    )
