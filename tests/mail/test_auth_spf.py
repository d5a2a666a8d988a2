"""SPF against a real Knot DNS server: every result, the lookup and void-lookup limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.auth.spf import SpfResult, check_spf
from tests.mail.auth_world import GOOD_IP, STRANGER_IP, zones
from tests.mail.dnsserver import KnotServer, knot_server, txt


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), zones()) as server:
        yield server


def spf(server: KnotServer, mail_from: str, ip: str, helo: str = "client.test") -> SpfResult:
    resolver = Resolver(server.address, timeout=2.0)
    return asyncio.run(check_spf(resolver, client_ip=ip, mail_from=mail_from, helo=helo))


@pytest.mark.parametrize(
    ("mail_from", "ip", "expected"),
    [
        ("alice@signed.test", GOOD_IP, "pass"),
        ("alice@signed.test", f"::ffff:{GOOD_IP}", "pass"),
        ("alice@signed.test", STRANGER_IP, "fail"),
        ("x@fail.spf.test", STRANGER_IP, "fail"),
        ("x@softfail.spf.test", STRANGER_IP, "softfail"),
        ("x@neutral.spf.test", STRANGER_IP, "neutral"),
        ("x@pass-a.spf.test", STRANGER_IP, "pass"),
        ("x@nospf.spf.test", STRANGER_IP, "none"),
        ("x@nonexistent.spf.test", STRANGER_IP, "none"),
        ("x@servfail.test", STRANGER_IP, "temperror"),
        ("x@tempinc.spf.test", STRANGER_IP, "temperror"),
        ("x@syntax.spf.test", STRANGER_IP, "permerror"),
        ("x@two.spf.test", STRANGER_IP, "permerror"),
        ("x@toomany.test", STRANGER_IP, "permerror"),
        ("x@void.spf.test", STRANGER_IP, "permerror"),
        ("x@v6.spf.test", "2001:db8:10::25", "pass"),
        ("x@v6.spf.test", "2001:db8:99::25", "fail"),
        ("x@redirect.spf.test", GOOD_IP, "pass"),
        ("x@redirect.spf.test", STRANGER_IP, "fail"),
        ("bob@macro.spf.test", STRANGER_IP, "pass"),  # exists:%{l}.allowed...
        ("eve@macro.spf.test", STRANGER_IP, "fail"),
        ("x@viamx.spf.test", STRANGER_IP, "pass"),  # the MX host's A record
    ],
)
def test_spf_results(dns_server: KnotServer, mail_from: str, ip: str, expected: str) -> None:
    result = spf(dns_server, mail_from, ip)
    assert result.result == expected, result
    assert result.identity == "mailfrom"
    assert result.domain == mail_from.split("@")[1]


def test_limits_are_named_in_the_explanation(dns_server: KnotServer) -> None:
    assert "lookup" in spf(dns_server, "x@toomany.test", STRANGER_IP).explanation.lower()
    assert "void" in spf(dns_server, "x@void.spf.test", STRANGER_IP).explanation.lower()


def test_null_sender_checks_helo(dns_server: KnotServer) -> None:
    good = spf(dns_server, "", GOOD_IP, helo="mx.signed.test")
    assert (good.result, good.identity, good.domain) == ("pass", "helo", "mx.signed.test")
    bad = spf(dns_server, "<>", STRANGER_IP, helo="mx.signed.test")
    assert (bad.result, bad.identity) == ("fail", "helo")


def test_garbage_identities_do_not_raise(dns_server: KnotServer) -> None:
    for mail_from, helo in [("a@", ""), ("@@", "x"), ("a@" + "x" * 300, "[1.2.3.4]"), ("", "")]:
        assert spf(dns_server, mail_from, STRANGER_IP, helo).result in {
            "none",
            "permerror",
            "temperror",
        }
    assert spf(dns_server, "a@signed.test", "not-an-ip").result == "none"


def test_silent_server_is_a_temperror(tmp_path: Path) -> None:
    # A UDP socket that never answers: the query times out instead of hanging the check.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        resolver = Resolver(f"127.0.0.1:{port}", timeout=0.3)
        result = asyncio.run(
            check_spf(resolver, client_ip=STRANGER_IP, mail_from="a@signed.test", helo="x")
        )
    assert result.result == "temperror"
    assert "timeout" in result.explanation


def test_ptr_skips_names_whose_address_lookup_fails(tmp_path: Path) -> None:
    # RFC 7208 §5.5: a PTR name whose A lookup fails (here a CNAME loop: Knot answers SERVFAIL)
    # is skipped and the search goes on; a failing PTR lookup makes the mechanism not match.
    # Both used to end the whole check as temperror.
    zones: dict[str, str | None] = {
        "ptr.test": "\n".join(
            [
                f"@ TXT {txt('v=spf1 ptr -all')}",
                "loop CNAME loop.ptr.test.",
                f"host A {STRANGER_IP}",
            ]
        ),
        "113.0.203.in-addr.arpa": "66 PTR loop.ptr.test.\n66 PTR host.ptr.test.",
        "100.51.198.in-addr.arpa": None,
    }
    with knot_server(tmp_path, zones) as server:
        assert spf(server, "x@ptr.test", STRANGER_IP).result == "pass"
        assert spf(server, "x@ptr.test", "198.51.100.7").result == "fail"
