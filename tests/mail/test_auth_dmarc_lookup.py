"""DMARC: "no record", "the From: domain does not exist" and "the lookup failed" stay apart.

Each case goes through the whole sender check (Authenticator) against a real Knot server that
serves the root zone, so a name no zone holds is NXDOMAIN as on the Internet, plus a zone
configured broken (SERVFAIL); timeouts come from a UDP socket that never answers. Checked
for each: the verdict's DMARC details, our Authentication-Results field and the console's
sentence (which used to say "publishes no DMARC policy" for a made-up domain).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from lanalyze.mail.auth import AuthConfig, Authenticator
from lanalyze.mail.auth.authenticator import AuthVerdict
from lanalyze.web.mailexplain import explain
from tests.mail.auth_world import STRANGER_IP, message
from tests.mail.dnsserver import KnotServer, knot_server, txt

NO_POLICY = "publishes no DMARC policy"


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    zones: dict[str, str | None] = {
        ".": "\n".join(
            [
                "nodmarc.test. A 192.0.2.10",
                f"nodmarc.test. TXT {txt('v=spf1 -all')}",
                "withdmarc.test. A 192.0.2.10",
                f"_dmarc.withdmarc.test. TXT {txt('v=DMARC1; p=reject')}",
            ]
        ),
        "servfail.test": None,
    }
    with knot_server(tmp_path_factory.mktemp("knot"), zones) as server:
        yield server


def check(resolver: str, from_domain: str, **settings: Any) -> AuthVerdict:
    auth = Authenticator(AuthConfig(resolver=resolver, **settings), "mx.local.example")

    async def go() -> AuthVerdict:
        await auth.start()
        try:
            return await auth.check_bytes(
                message(f"Someone <someone@{from_domain}>"),
                mail_from=f"someone@{from_domain}",
                helo="client.test",
                client_ip=STRANGER_IP,
                rcpt_to=["bob@local.example"],
            )
        finally:
            await auth.stop()

    return asyncio.run(go())


def dmarc_sentence(verdict: AuthVerdict) -> str:
    auth = {"dmarc": verdict.dmarc, "details": verdict.details}
    return next(f.text for f in explain(auth) if f.check == "DMARC")


def dmarc_field(verdict: AuthVerdict) -> str:
    text = verdict.header.decode().replace("\r\n\t ", " ")
    return next(part.strip() for part in text.split(";") if part.strip().startswith("dmarc="))


def test_domain_without_a_record_publishes_no_policy(dns_server: KnotServer) -> None:
    verdict = check(dns_server.address, "nodmarc.test", dns_timeout=2.0)
    assert verdict.dmarc == "none"
    assert verdict.details["dmarc"]["lookup"] == "no_record"
    assert dmarc_field(verdict) == "dmarc=none (no DMARC record) header.from=nodmarc.test"
    assert dmarc_sentence(verdict).startswith(f"nodmarc.test {NO_POLICY}")


@pytest.mark.parametrize("domain", ["ghost.test", "made-up.nodmarc.test"])
def test_domain_that_does_not_exist_is_named_so(dns_server: KnotServer, domain: str) -> None:
    verdict = check(dns_server.address, domain, dns_timeout=2.0)
    assert verdict.dmarc == "none"
    assert verdict.details["dmarc"]["lookup"] == "no_domain"
    assert "does not exist [NXDOMAIN]" in dmarc_field(verdict)
    sentence = dmarc_sentence(verdict)
    assert NO_POLICY not in sentence
    assert f"{domain} does not exist" in sentence
    findings = explain({"dmarc": "none", "details": verdict.details})
    assert next(f.tone for f in findings if f.check == "DMARC") == "bad"


@pytest.mark.parametrize("domain", ["servfail.test", "www.servfail.test"])
def test_servfail_is_a_failed_lookup(dns_server: KnotServer, domain: str) -> None:
    verdict = check(dns_server.address, domain, dns_timeout=2.0)
    assert verdict.dmarc == "temperror"
    assert verdict.details["dmarc"]["lookup"] == "failed"
    assert "SERVFAIL" in dmarc_field(verdict)
    assert f"header.from={domain}" in dmarc_field(verdict)
    sentence = dmarc_sentence(verdict)
    assert NO_POLICY not in sentence
    assert f"policy of {domain} could not be looked up" in sentence
    assert "not a missing policy" in sentence


def test_a_record_is_still_found(dns_server: KnotServer) -> None:
    verdict = check(dns_server.address, "withdmarc.test", dns_timeout=2.0)
    assert (verdict.dmarc, verdict.details["dmarc"]["lookup"]) == ("fail", "record")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A UDP socket that never answers: every query times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{silent.getsockname()[1]}"


def test_dns_timeout_is_a_failed_lookup(silent_server: str) -> None:
    verdict = check(silent_server, "paypal.com", dns_timeout=0.2, check_timeout=30)
    assert verdict.dmarc == "temperror"
    assert verdict.details["dmarc"]["lookup"] == "failed"
    assert "timeout" in dmarc_field(verdict)
    assert NO_POLICY not in dmarc_sentence(verdict)
    assert "could not be looked up" in dmarc_sentence(verdict)


def test_check_deadline_is_a_failed_lookup_naming_the_domain(silent_server: str) -> None:
    # The whole check's deadline ends the lookup before its own DNS timeout does.
    verdict = check(silent_server, "paypal.com", dns_timeout=30, check_timeout=0.2)
    assert verdict.dmarc == "temperror"
    assert verdict.details["dmarc"]["from_domain"] == "paypal.com"
    assert verdict.details["dmarc"]["lookup"] == "failed"
    assert dmarc_field(verdict) == (
        "dmarc=temperror (no answer within mail.auth.check_timeout) header.from=paypal.com"
    )
    sentence = dmarc_sentence(verdict)
    assert NO_POLICY not in sentence
    assert "policy of paypal.com could not be looked up" in sentence


def test_console_wording_of_older_and_edge_records() -> None:
    def sentence(word: str, dmarc: dict[str, Any]) -> str:
        return next(
            f.text
            for f in explain({"dmarc": word, "details": {"dmarc": dmarc}})
            if f.check == "DMARC"
        )

    # Stored before "lookup" existed: a temperror without a policy was a failed lookup.
    old = sentence("temperror", {"from_domain": "x.test", "reason": "_dmarc.x.test: timeout"})
    assert "policy of x.test could not be looked up" in old
    assert "_dmarc.x.test: timeout" in old
    # A record was found, but SPF or DKIM hit DNS trouble.
    hidden = sentence(
        "temperror",
        {
            "from_domain": "x.test",
            "policy": "reject",
            "reason": "SPF temperror",
            "lookup": "record",
        },
    )
    assert "x.test publishes a DMARC policy" in hidden
    assert "SPF temperror" in hidden
    # A bug of ours in the check is not DNS trouble.
    bug = sentence("temperror", {"from_domain": "", "reason": "internal error"})
    assert bug == "The DMARC check could not be completed (temperror): internal error."
    # No From: domain at all is not a domain that publishes nothing.
    nofrom = sentence("none", {"from_domain": "", "reason": "no From: domain to evaluate"})
    assert NO_POLICY not in nofrom
    assert "no From: domain" in nofrom
