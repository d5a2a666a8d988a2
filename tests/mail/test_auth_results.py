"""Authentication-Results rendering and removal (RFC 8601), DMARC record parsing, metrics,
and fuzzing of every parser of peer bytes in the sender checks.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import authres
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.auth import AuthConfig, Authenticator, strip_our_results
from lanalyze.mail.auth.dmarc import DmarcRecord, organisational_domain
from lanalyze.mail.auth.message import from_info, header_fields, split_message
from lanalyze.mail.auth.results import ResInfo, authserv_id_of, render
from lanalyze.metrics import render as render_metrics
from tests.mail.auth_world import zones
from tests.mail.dnsserver import KnotServer, knot_server

OURS = "mx.local.example"


def test_strip_removes_only_fields_claiming_our_id() -> None:
    msg = (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.local.example; dkim=pass header.d=bank.test\r\n"
        b"Authentication-Results: (forged) MX.Local.Example (a comment);\r\n\tspf=pass\r\n"
        b'Authentication-Results: "mx.local.example"; dmarc=pass\r\n'
        b"Authentication-Results: mx.local.example.evil; spf=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"Authentication-Results: mx.local.example; this is ; not valid ((\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.local.example; body lines are not headers\r\n"
    )
    out = strip_our_results(msg, OURS)
    assert out == (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.local.example.evil; spf=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.local.example; body lines are not headers\r\n"
    )


def test_verdict_carries_the_ranges_to_strip(tmp_path: Path) -> None:
    msg = (
        b"Authentication-Results: mx.local.example; spf=pass\r\n"
        b"From: a@x.test\r\n"
        b"Authentication-Results: other; spf=pass\r\n"
        b"Authentication-Results: mx.local.example;\r\n dkim=pass\r\n\r\nbody\r\n"
    )
    path = tmp_path / "m.eml"
    path.write_bytes(msg)
    auth = Authenticator(AuthConfig(), OURS)
    verdict = asyncio.run(
        auth.check(
            path, mail_from="", helo="", client_ip="", rcpt_to=[], authenticated_user="alice"
        )
    )
    kept = bytearray(msg)
    for start, end in reversed(verdict.strip_headers):
        del kept[start:end]
    assert bytes(kept) == strip_our_results(msg, OURS)
    assert bytes(kept).count(b"Authentication-Results") == 1


def test_strip_leaves_other_messages_byte_identical() -> None:
    for msg in [b"", b"\r\n", b"no header at all", b"Subject: x\n\nbody\n", b"X: y"]:
        assert strip_our_results(msg, OURS) == msg


def test_authserv_id_parsing() -> None:
    assert authserv_id_of(" (c (nested)) example.org 1; spf=pass") == "example.org"
    assert authserv_id_of('"quoted \\" id"; none') == 'quoted " id'
    assert authserv_id_of("   ") is None


def test_render_quotes_hostile_values_and_folds() -> None:
    header = render(
        OURS,
        [
            ResInfo("spf", "fail", "x\r\nBcc: victim@x", [("smtp.mailfrom", 'a b"c@x.test')]),
            ResInfo("dkim", "pass", "", [("header.d", "x.test"), ("header.s", "sel")]),
            ResInfo("dmarc", "fail", "p=reject (unbalanced", [("header.from", "x.test")]),
        ],
    )
    text = header.decode()
    assert text.count("\r\n") == len(text.splitlines())  # only CRLF line ends, no bare LF
    assert "\r\nBcc:" not in text
    assert 'smtp.mailfrom="a b\\"c@x.test"' in text
    parsed = authres.AuthenticationResultsHeader.parse(text.replace("\r\n", ""))
    assert [r.method for r in parsed.results] == ["spf", "dkim", "dmarc"]
    assert all(len(line) <= 998 for line in text.split("\r\n"))


def test_dmarc_record_parsing() -> None:
    record = DmarcRecord.parse(b"v=DMARC1; p=Reject; sp=none; pct=20; adkim=s", "x.test")
    assert record is not None
    assert (record.policy, record.subdomain_policy, record.pct, record.adkim, record.aspf) == (
        "reject",
        "none",
        20,
        "s",
        "r",
    )
    # No valid p but rua: treat as p=none (RFC 7489 §6.6.3 step 6); neither: no record.
    assert DmarcRecord.parse(b"v=DMARC1; p=bogus; rua=mailto:a@x.test", "x.test").policy == "none"  # type: ignore[union-attr]
    assert DmarcRecord.parse(b"v=DMARC1; p=bogus", "x.test") is None
    assert DmarcRecord.parse(b"v=DMARC1; p=reject; pct=1000", "x.test").pct == 100  # type: ignore[union-attr]
    assert DmarcRecord.parse(b"\xff\xfe", "x.test") is None


def test_organisational_domain_uses_the_public_suffix_list() -> None:
    assert organisational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organisational_domain("mail.signed.test") == "signed.test"
    assert organisational_domain("co.uk") == "co.uk"


def test_counters_are_on_metrics(tmp_path: Path) -> None:
    # No resolver needed: an unreachable one gives temperrors quickly, which are counted too.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        config = AuthConfig(resolver=f"127.0.0.1:{silent.getsockname()[1]}", dns_timeout=0.2)
        path = tmp_path / "m.eml"
        path.write_bytes(b"From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n")
        verdict = asyncio.run(
            Authenticator(config, OURS).check(
                path,
                mail_from="a@x.test",
                helo="h",
                client_ip="192.0.2.1",
                rcpt_to=[],
                authenticated_user=None,
            )
        )
    assert verdict.spf == "temperror" and verdict.dmarc == "temperror"
    text = render_metrics().decode()
    assert 'lanalyze_mail_auth_results_total{method="spf",result="temperror"}' in text
    assert 'lanalyze_mail_auth_actions_total{action="accept"}' in text


# --- fuzz ----------------------------------------------------------------------------------

header_names = st.sampled_from(
    [b"From", b"from", b"To", b"DKIM-Signature", b"ARC-Seal", b"Authentication-Results", b"X"]
)
header_values = st.binary(max_size=60) | st.sampled_from(
    [
        b" mx.local.example; spf=pass",
        b" v=1; a=rsa-sha256; d=x.test; s=s; h=from; bh=AAAA; b=AAAA; l=5",
        b" i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA",
        b' "=?utf-8?q?mx.local.example?=" <a@b>, c@d, <>',
        b" (((",
    ]
)
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r\n\t", b"\r", b""])
headers = st.lists(st.tuples(header_names, header_values, line_ends), max_size=8).map(
    lambda fields: b"".join(name + b":" + value + end for name, value, end in fields)
)
messages = st.tuples(headers, st.sampled_from([b"\r\n\r\n", b"\n\n", b""]), st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(messages)
def test_fuzz_header_parsers(parts: tuple[bytes, bytes, bytes]) -> None:
    msg = b"".join(parts)
    stripped = strip_our_results(msg, OURS)
    assert len(stripped) <= len(msg)
    assert strip_our_results(stripped, OURS) == stripped
    header, _ = split_message(msg)
    assert b"".join(raw for _, raw in header_fields(header)) == header
    info = from_info(header)
    assert all(d == d.lower() for d in info.domains)


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), zones()) as server:
        yield server


@settings(max_examples=150, deadline=None)
@given(messages, st.text(max_size=30), st.text(max_size=20))
def test_fuzz_check_never_raises(
    dns_server: KnotServer, parts: tuple[bytes, bytes, bytes], mail_from: str, helo: str
) -> None:
    # Against the real server: names outside its zones are REFUSED at once (temperror).
    config = AuthConfig(resolver=dns_server.address, dns_timeout=1.0, check_timeout=5)
    auth = Authenticator(config, OURS, local_domains=["local.example"])
    verdict = asyncio.run(
        auth.check_bytes(
            b"".join(parts), mail_from=mail_from, helo=helo, client_ip="192.0.2.1", rcpt_to=[]
        )
    )
    text = verdict.header.decode()
    assert text.startswith("Authentication-Results: ") and text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "") and "\r" not in text.replace("\r\n", "")
    parsed = authres.AuthenticationResultsHeader.parse(text.replace("\r\n", ""))
    assert {r.method for r in parsed.results} >= {"spf", "dkim", "dmarc", "arc"}
    assert verdict.action in ("accept", "reject", "quarantine")


def test_dns_cache_answers_after_the_server_is_gone(tmp_path: Path) -> None:
    zone = {"cached.test": '@ TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc TXT "v=DMARC1; p=reject"'}
    msg = b"From: a@cached.test\r\nSubject: s\r\n\r\nbody\r\n"

    def check(auth: Authenticator) -> tuple[str, str]:
        verdict = asyncio.run(
            auth.check_bytes(
                msg, mail_from="a@cached.test", helo="h", client_ip="192.0.2.1", rcpt_to=[]
            )
        )
        return verdict.spf, verdict.dmarc

    with knot_server(tmp_path / "knot", zone) as server:
        config = AuthConfig(resolver=server.address, dns_timeout=0.5)
        cached = Authenticator(config, OURS)
        uncached = Authenticator(config.model_copy(update={"dns_cache_size": 0}), OURS)
        assert check(cached) == check(uncached) == ("pass", "pass")
    # knotd has stopped: only the cache (TTL 60 s) still knows the records.
    assert check(cached) == ("pass", "pass")
    assert check(uncached) == ("temperror", "temperror")
