"""The DNS world of the sender-check tests: domains, keys, zones and message builders.

Addresses: 192.0.2.10 is the legitimate outbound server of the test domains,
203.0.113.66 a stranger. Keys are generated once per process (RSA 1024 keeps it fast;
1024 bits is dkimpy's minimum).
"""

from __future__ import annotations

import functools
from email.utils import formatdate, make_msgid

from lanalyze.mail.auth.keys import KeyPair, generate
from tests.mail.dnsserver import txt

GOOD_IP = "192.0.2.10"
STRANGER_IP = "203.0.113.66"
SPF_GOOD = f"v=spf1 ip4:{GOOD_IP} -all"


@functools.cache
def keys() -> dict[str, KeyPair]:
    return {
        "rsa": generate("rsa", 1024),
        "ed": generate("ed25519"),
        "arc": generate("rsa", 1024),
        "other": generate("rsa", 1024),
    }


def _dkim(selector: str, pair: KeyPair) -> str:
    return f"{selector}._domainkey IN TXT {txt(pair.txt_record)}"


def zones() -> dict[str, str | None]:
    k = keys()
    signing = "\n".join([_dkim("rsa", k["rsa"]), _dkim("ed", k["ed"])])
    too_many = "\n".join(
        f"l{i} TXT {txt(f'v=spf1 include:l{i + 1}.toomany.test -all')}" for i in range(12)
    )
    return {
        # p=reject, signs with RSA and Ed25519, SPF for GOOD_IP; its HELO name has SPF too.
        "signed.test": "\n".join(
            [
                f"@ TXT {txt(SPF_GOOD)}",
                f"@ MX 10 mx.signed.test.\nmx A {GOOD_IP}",
                f"mx TXT {txt(SPF_GOOD)}",
                f"_dmarc TXT {txt('v=DMARC1; p=reject; rua=mailto:d@signed.test')}",
                signing,
                f"bounces TXT {txt(SPF_GOOD)}",
            ]
        ),
        "quarantine.test": f"@ TXT {txt(SPF_GOOD)}\n_dmarc TXT {txt('v=DMARC1; p=quarantine')}",
        "none.test": f"@ TXT {txt(SPF_GOOD)}\n_dmarc TXT {txt('v=DMARC1; p=none')}",
        # The organisation says none for itself but reject for its subdomains.
        "sub.test": "\n".join(
            [
                f"@ TXT {txt(SPF_GOOD)}",
                f"x TXT {txt(SPF_GOOD)}",
                f"_dmarc TXT {txt('v=DMARC1; p=none; sp=reject')}",
            ]
        ),
        "strict.test": "\n".join(
            [
                f"@ TXT {txt(SPF_GOOD)}",
                f"mail TXT {txt(SPF_GOOD)}",
                f"_dmarc TXT {txt('v=DMARC1; p=reject; aspf=s; adkim=s')}",
                _dkim("rsa", k["rsa"]),
            ]
        ),
        "relaxed.test": "\n".join(
            [
                f"mail TXT {txt(SPF_GOOD)}",
                f"_dmarc TXT {txt('v=DMARC1; p=reject')}",
            ]
        ),
        "pct.test": f"@ TXT {txt(SPF_GOOD)}\n_dmarc TXT {txt('v=DMARC1; p=reject; pct=0')}",
        "spf.test": "\n".join(
            [
                f"fail TXT {txt(SPF_GOOD)}",
                f"softfail TXT {txt(f'v=spf1 ip4:{GOOD_IP} ~all')}",
                f"neutral TXT {txt(f'v=spf1 ip4:{GOOD_IP} ?all')}",
                f"pass-a TXT {txt('v=spf1 a:host.spf.test mx -all')}",
                f"host A {STRANGER_IP}",
                f"syntax TXT {txt('v=spf1 ip4:192.0.2.300 frobnicate -all')}",
                f"void TXT {txt('v=spf1 a:n1.spf.test a:n2.spf.test a:n3.spf.test -all')}",
                f"two TXT {txt('v=spf1 -all')}\ntwo TXT {txt('v=spf1 +all')}",
                'nospf TXT "just a text record"',
                f"tempinc TXT {txt('v=spf1 include:servfail.test -all')}",
                f"v6 TXT {txt('v=spf1 ip6:2001:db8:10::/48 -all')}",
                f"redirect TXT {txt('v=spf1 redirect=fail.spf.test')}",
                f"macro TXT {txt('v=spf1 exists:%{l}.allowed.spf.test -all')}",
                f"bob.allowed A {GOOD_IP}",
                f"viamx TXT {txt('v=spf1 mx -all')}",
                "viamx MX 10 host.spf.test.",
            ]
        ),
        "toomany.test": f"@ TXT {txt('v=spf1 include:l0.toomany.test -all')}\n{too_many}",
        "forwarder.test": "\n".join(
            [
                f"@ TXT {txt(f'v=spf1 ip4:{STRANGER_IP} -all')}",
                _dkim("arc", k["arc"]),
            ]
        ),
        "local.example": f"@ TXT {txt(SPF_GOOD)}",
        "servfail.test": None,
    }


def message(
    from_header: str | None = "Alice <alice@signed.test>",
    *,
    to: str = "bob@local.example",
    subject: str = "Quarterly figures",
    body: str = "Hello Bob,\r\n\r\nthe figures are attached.\r\n\r\nAlice\r\n",
    extra: str = "",
) -> bytes:
    lines = []
    if from_header is not None:
        lines.append(f"From: {from_header}")
    lines += [
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {formatdate(1_700_000_000)}",
        f"Message-ID: {make_msgid(domain='signed.test')}",
    ]
    header = "\r\n".join(lines) + "\r\n" + extra
    return (header + "\r\n" + body).encode()
