"""The sender checks end to end against a real DNS server (knotd), one message per case.

Each case builds its message (signing it with dkimpy where the case needs a signature), runs
``Authenticator.check`` on the spooled file and compares the verdict and the
Authentication-Results field with what RFC 7208/6376/7489/8617/8601 say it must be.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import authres
import authres.arc
import authres.dmarc
import dkim
import pytest

from lanalyze.mail.auth import AuthConfig, Authenticator, AuthVerdict
from tests.mail.auth_world import GOOD_IP, STRANGER_IP, keys, message, zones
from tests.mail.dnsserver import KnotServer, knot_server

AUTHSERV_ID = "mx.local.example"
Check = Callable[..., AuthVerdict]


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), zones()) as server:
        yield server


@pytest.fixture
def run(dns_server: KnotServer, tmp_path: Path) -> Check:
    def check(
        msg: bytes,
        *,
        mail_from: str = "alice@signed.test",
        ip: str = GOOD_IP,
        helo: str = "mx.signed.test",
        rng: float = 0.0,
        user: str | None = None,
        **settings: object,
    ) -> AuthVerdict:
        config = AuthConfig(resolver=dns_server.address, dns_timeout=2.0, **settings)
        auth = Authenticator(config, AUTHSERV_ID, local_domains=["local.example"], rng=lambda: rng)
        path = tmp_path / "spooled.eml"
        path.write_bytes(msg)

        async def go() -> AuthVerdict:
            await auth.start()
            try:
                return await auth.check(
                    path,
                    mail_from=mail_from,
                    helo=helo,
                    client_ip=ip,
                    rcpt_to=["bob@local.example"],
                    authenticated_user=user,
                )
            finally:
                await auth.stop()

        verdict = asyncio.run(go())
        assert_well_formed(verdict)
        return verdict

    return check


def assert_well_formed(verdict: AuthVerdict) -> None:
    """The field parses with authres (an independent RFC 8601 parser) and is folded."""
    text = verdict.header.decode()
    assert text.startswith("Authentication-Results: ") and text.endswith("\r\n")
    assert all(len(line) < 998 for line in text.split("\r\n"))
    assert "\n" not in text.replace("\r\n", "")
    parsed = authres.AuthenticationResultsHeader.parse(text.replace("\r\n", ""))
    assert str(parsed.authserv_id) == AUTHSERV_ID
    methods = {r.method for r in parsed.results}
    assert verdict.as_dict()["action"] == verdict.action
    if "auth" not in methods and methods != {"none"}:
        assert {"spf", "dkim", "dmarc", "arc"} <= methods


def dkim_sign(
    msg: bytes,
    *,
    domain: str = "signed.test",
    selector: str = "rsa",
    key: str = "rsa",
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"),
    length: bool = False,
) -> bytes:
    algorithm = b"ed25519-sha256" if key == "ed" else b"rsa-sha256"
    header = dkim.sign(
        msg,
        selector.encode(),
        domain.encode(),
        keys()[key].private,
        canonicalize=canonicalize,
        signature_algorithm=algorithm,
        length=length,
    )
    return header + msg


def results(verdict: AuthVerdict) -> dict[str, list[str]]:
    """method -> the resinfo texts for it, for readable assertions."""
    text = verdict.header.decode().replace("\r\n\t ", " ").replace("\r\n\t", " ")
    out: dict[str, list[str]] = {}
    for raw in text.split(";")[1:]:
        part = raw.strip()
        out.setdefault(part.split("=", 1)[0], []).append(part)
    return out


# --- the good message and its forgeries -------------------------------------------------


def test_signed_message_from_reject_domain_passes(run: Check) -> None:
    verdict = run(dkim_sign(message()))
    assert (verdict.spf, verdict.dkim, verdict.dmarc, verdict.arc) == (
        "pass",
        "pass",
        "pass",
        "none",
    )
    assert verdict.action == "accept" and verdict.flags == []
    r = results(verdict)
    assert r["spf"] == ["spf=pass smtp.mailfrom=alice@signed.test"]
    assert r["dkim"] == ["dkim=pass header.d=signed.test header.s=rsa header.a=rsa-sha256"]
    assert r["dmarc"] == ["dmarc=pass (p=reject dis=none) header.from=signed.test"]
    assert r["arc"] == ["arc=none"]


@pytest.mark.parametrize("canonicalize", [(b"simple", b"simple"), (b"relaxed", b"relaxed")])
def test_ed25519_and_rsa_signatures_both_verify(run: Check, canonicalize) -> None:
    msg = dkim_sign(message(), canonicalize=canonicalize)
    msg = dkim_sign(msg, selector="ed", key="ed", canonicalize=canonicalize)
    verdict = run(msg, ip=STRANGER_IP)  # SPF fails: DKIM alone carries DMARC
    assert verdict.spf == "fail" and verdict.dmarc == "pass" and verdict.action == "accept"
    dkim_results = results(verdict)["dkim"]
    assert dkim_results == [
        "dkim=pass header.d=signed.test header.s=ed header.a=ed25519-sha256",
        "dkim=pass header.d=signed.test header.s=rsa header.a=rsa-sha256",
    ]


def test_klez_style_forged_from_is_rejected(run: Check) -> None:
    victim = "".join(random.choices("abcdefghij", k=8)) + "@signed.test"
    forged = message(from_header=f"Support <{victim}>", subject="Re: your account")
    verdict = run(forged, mail_from=victim, ip=STRANGER_IP, helo="infected-pc")
    assert (verdict.spf, verdict.dkim, verdict.dmarc) == ("fail", "none", "fail")
    assert verdict.action == "reject"
    assert verdict.reason.startswith("DMARC policy reject for signed.test: SPF fail")
    assert "no aligned DKIM" in verdict.reason
    r = results(verdict)
    assert r["dmarc"][0].startswith("dmarc=fail (p=reject dis=reject:")
    assert r["dkim"] == ["dkim=none"]


def test_signed_message_with_forged_from_fails_dkim_and_is_rejected(run: Check) -> None:
    signed = dkim_sign(message())
    forged = signed.replace(b"From: Alice <alice@signed.test>", b"From: Mallory <ceo@signed.test>")
    verdict = run(forged, mail_from="random@none.test", ip=STRANGER_IP)
    assert verdict.dkim == "fail" and verdict.dmarc == "fail" and verdict.action == "reject"
    assert "from_envelope_mismatch" in verdict.flags


def test_tampered_body_fails_dkim(run: Check) -> None:
    tampered = dkim_sign(message()).replace(b"figures are attached", b"invoice is attached")
    verdict = run(tampered)
    assert verdict.dkim == "fail" and "body hash mismatch" in results(verdict)["dkim"][0]
    # SPF still passes and aligns, so DMARC passes and the message is accepted.
    assert verdict.dmarc == "pass" and verdict.action == "accept"
    assert run(tampered, ip=STRANGER_IP).action == "reject"
    assert run(tampered, on_dkim_fail="quarantine").action == "quarantine"


def test_missing_key_is_permerror_and_dns_trouble_temperror(run: Check) -> None:
    no_key = dkim_sign(message(), selector="gone")
    assert run(no_key).dkim == "permerror"
    # An RSA signature whose selector publishes an Ed25519 key (found by fuzzing: dkimpy
    # lets the crypto library's error escape).
    wrong_key_type = dkim_sign(message(), selector="ed", key="rsa")
    assert run(wrong_key_type).dkim == "permerror"
    broken = dkim_sign(message(from_header="a@servfail.test"), domain="servfail.test")
    verdict = run(broken, mail_from="a@servfail.test")
    assert verdict.dkim == "temperror" and verdict.dmarc == "temperror"
    assert verdict.action == "accept"


def test_length_tag_leaves_appended_content_unsigned(run: Check) -> None:
    signed = dkim_sign(message(), length=True)
    assert run(signed).dkim == "pass"
    appended = signed + b"\r\nClick http://evil.test/ to claim your prize\r\n"
    verdict = run(appended, ip=STRANGER_IP)
    assert verdict.dkim == "policy" and "dkim_partial_body" in verdict.flags
    assert "signs" in results(verdict)["dkim"][0]
    assert verdict.dmarc == "fail" and verdict.action == "reject"
    lax = run(appended, ip=STRANGER_IP, length_tag="pass")
    assert lax.dkim == "pass" and lax.dmarc == "pass" and "dkim_partial_body" in lax.flags


# --- SPF results as they appear in the header -----------------------------------------------


@pytest.mark.parametrize(
    ("mail_from", "expected"),
    [
        ("x@softfail.spf.test", "softfail"),
        ("x@neutral.spf.test", "neutral"),
        ("x@nospf.spf.test", "none"),
        ("x@servfail.test", "temperror"),
        ("x@syntax.spf.test", "permerror"),
        ("x@toomany.test", "permerror"),
        ("x@void.spf.test", "permerror"),
    ],
)
def test_spf_words(run: Check, mail_from: str, expected: str) -> None:
    verdict = run(message(from_header=mail_from), mail_from=mail_from, ip=STRANGER_IP)
    assert verdict.spf == expected
    assert results(verdict)["spf"][0].startswith(f"spf={expected} ")
    assert f"smtp.mailfrom={mail_from}" in results(verdict)["spf"][0]


def test_null_sender_uses_helo(run: Check) -> None:
    verdict = run(message(from_header="MAILER-DAEMON@signed.test"), mail_from="", ip=GOOD_IP)
    assert verdict.spf == "pass" and results(verdict)["spf"] == [
        "spf=pass smtp.helo=mx.signed.test"
    ]
    assert verdict.dmarc == "pass"  # the HELO domain aligns with signed.test


# --- DMARC policies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("author", "action", "policy"),
    [
        ("a@none.test", "accept", "none"),
        ("a@quarantine.test", "quarantine", "quarantine"),
        ("a@signed.test", "reject", "reject"),
        ("a@x.sub.test", "reject", "reject"),  # sp=reject for subdomains
        ("a@sub.test", "accept", "none"),  # p=none for the organisation itself
    ],
)
def test_dmarc_policies(run: Check, author: str, action: str, policy: str) -> None:
    verdict = run(message(from_header=author), mail_from=author, ip=STRANGER_IP)
    assert verdict.dmarc == "fail" and verdict.action == action
    domain = author.split("@")[1]
    assert results(verdict)["dmarc"][0].startswith(f"dmarc=fail (p={policy} dis={policy}:")
    assert f"header.from={domain}" in results(verdict)["dmarc"][0]


def test_policy_can_be_downgraded_to_tag_or_quarantine(run: Check) -> None:
    forged = message(from_header="a@signed.test")
    kw = {"mail_from": "a@signed.test", "ip": STRANGER_IP}
    assert run(forged, on_dmarc_reject="quarantine", **kw).action == "quarantine"
    tagged = run(forged, on_dmarc_reject="tag", **kw)
    assert tagged.action == "accept" and tagged.dmarc == "fail"


def test_relaxed_and_strict_alignment(run: Check) -> None:
    # SPF passes for the subdomain mail.X; relaxed alignment accepts, strict does not.
    relaxed = run(message(from_header="a@relaxed.test"), mail_from="b@mail.relaxed.test")
    assert relaxed.spf == "pass" and relaxed.dmarc == "pass"
    strict = run(message(from_header="a@strict.test"), mail_from="b@mail.strict.test")
    assert strict.spf == "pass" and strict.dmarc == "fail" and strict.action == "reject"
    # DKIM d=strict.test aligns strictly with From strict.test, not with x.strict.test.
    signed = dkim_sign(message(from_header="a@strict.test"), domain="strict.test")
    assert run(signed, ip=STRANGER_IP, mail_from="a@strict.test").dmarc == "pass"
    sub = dkim_sign(message(from_header="a@x.strict.test"), domain="strict.test")
    verdict = run(sub, ip=STRANGER_IP, mail_from="a@x.strict.test")
    assert verdict.dkim == "pass" and verdict.dmarc == "fail" and verdict.action == "reject"


def test_pct_samples_the_policy(run: Check) -> None:
    forged = message(from_header="a@pct.test")
    verdict = run(forged, mail_from="a@pct.test", ip=STRANGER_IP, rng=0.5)
    # pct=0: no message is in the sample, so reject becomes quarantine (RFC 7489 §6.6.4).
    assert verdict.dmarc == "fail" and verdict.action == "quarantine"
    assert "pct" in verdict.reason
    assert results(verdict)["dmarc"][0].startswith("dmarc=fail (p=reject dis=quarantine:")


def test_dmarc_dns_trouble_is_temperror_not_reject(run: Check) -> None:
    verdict = run(message(from_header="a@servfail.test"), mail_from="a@signed.test")
    assert verdict.dmarc == "temperror" and verdict.action == "accept"


# --- From: oddities (RFC 7489 §6.6.1) and our own flags --------------------------------------


def test_no_from_field(run: Check) -> None:
    verdict = run(message(from_header=None))
    assert verdict.dmarc == "none" and "no_from" in verdict.flags
    assert results(verdict)["dmarc"][0].startswith("dmarc=none")
    assert run(message(from_header=None), on_malformed_from="reject").action == "reject"


def test_several_from_domains_take_the_strictest_failing_policy(run: Check) -> None:
    two_fields = message(from_header="a@none.test", extra="From: b@signed.test\r\n")
    verdict = run(two_fields, mail_from="a@none.test", ip=STRANGER_IP)
    assert "multiple_from" in verdict.flags
    assert verdict.dmarc == "fail" and verdict.action == "reject"
    assert "header.from=signed.test" in results(verdict)["dmarc"][0]
    one_field = message(from_header="a@none.test, b@quarantine.test")
    verdict = run(one_field, mail_from="a@none.test", ip=STRANGER_IP)
    assert "multiple_from" in verdict.flags and verdict.action == "quarantine"
    crowd = ", ".join(f"a@d{i}.test" for i in range(50))
    verdict = run(message(from_header=crowd), mail_from="a@none.test", ip=STRANGER_IP)
    assert verdict.dmarc == "permerror" and "multiple_from" in verdict.flags


def test_local_domain_claimed_from_outside(run: Check) -> None:
    verdict = run(message(from_header="ceo@local.example"), mail_from="x@none.test", ip=STRANGER_IP)
    assert "local_domain_claimed_from_outside" in verdict.flags
    name_claim = message(from_header='"admin@local.example" <x@none.test>')
    verdict = run(name_claim, mail_from="x@none.test", ip=GOOD_IP)
    assert "local_domain_claimed_from_outside" in verdict.flags
    assert (
        run(name_claim, mail_from="x@none.test", on_local_domain_claimed="reject").action
        == "reject"
    )
    honest = run(message(from_header="Bob <bob@none.test>"), mail_from="bob@none.test")
    assert honest.flags == []


def test_authenticated_submission_is_not_checked(run: Check) -> None:
    verdict = run(message(), user="alice")
    assert verdict.action == "accept" and verdict.spf == "none"
    assert results(verdict) == {"auth": ["auth=pass smtp.auth=alice"]}


# --- ARC -----------------------------------------------------------------------------------


def arc_forward(msg: bytes) -> bytes:
    """What a mailing list does: authenticate, add a footer (breaking DKIM), seal."""
    msg = msg.replace(b"\r\n\r\n", b"\r\nList-Id: <team.forwarder.test>\r\n\r\n", 1)
    msg += b"--\r\nteam mailing list\r\n"
    msg = b"Authentication-Results: forwarder.test; dkim=pass header.d=signed.test\r\n" + msg
    seal = dkim.arc_sign(msg, b"arc", b"forwarder.test", keys()["arc"].private, b"forwarder.test")
    return b"".join(seal) + msg


def test_arc_sealed_forwarded_message(run: Check) -> None:
    forwarded = arc_forward(dkim_sign(message()))
    verdict = run(forwarded, mail_from="team-bounces@forwarder.test", ip=STRANGER_IP)
    assert verdict.arc == "pass" and results(verdict)["arc"] == ["arc=pass (1 sets)"]
    assert verdict.details["arc"]["sealers"] == ["forwarder.test"]
    assert verdict.dkim == "fail"  # the footer broke the author's signature
    assert verdict.action == "reject"  # DMARC fails; ARC is recorded, not trusted by default
    trusted = run(
        forwarded,
        mail_from="team-bounces@forwarder.test",
        ip=STRANGER_IP,
        arc_trusted_sealers=["forwarder.test"],
    )
    assert trusted.action == "accept" and "trusted ARC sealer forwarder.test" in trusted.reason
    tampered = forwarded.replace(b"Quarterly figures", b"Quarterly figures!!")
    assert run(tampered, mail_from="team-bounces@forwarder.test").arc == "fail"


def test_verdict_is_json_able(run: Check) -> None:
    import json

    verdict = run(arc_forward(dkim_sign(message())), mail_from="x@forwarder.test")
    data = json.loads(json.dumps(verdict.as_dict()))
    assert data["arc"] == "pass" and data["details"]["dkim"][0]["domain"] == "signed.test"


def test_imitation_of_a_known_sender_is_flagged(run: Check) -> None:
    # The first hour's case: From: claims paypal.com, the envelope comes from elsewhere, and
    # DMARC cannot say more than "none" (here "temperror": this DNS serves no paypal.com).
    paypal = run(message(from_header="PayPal <service@paypal.com>"), mail_from="x@none.test")
    assert paypal.dmarc in ("none", "temperror")
    assert {"from_envelope_mismatch", "well_known_domain_claimed"} <= set(paypal.flags)
    lookalike = run(message(from_header="service@paypa1.com"), mail_from="service@paypa1.com")
    assert "lookalike_domain" in lookalike.flags
    local_lookalike = run(message(from_header="ceo@1ocal.example"), mail_from="ceo@1ocal.example")
    assert "lookalike_domain" in local_lookalike.flags
    name = run(message(from_header="PayPal Service <x@none.test>"), mail_from="x@none.test")
    assert name.flags == ["display_name_spoof"]
    address = message(from_header='"service@paypal.com" <x@none.test>')
    assert "display_name_spoof" in run(address, mail_from="x@none.test").flags
    assert run(message(), mail_from="alice@signed.test").as_dict()["flag_version"] == 2
