"""Hostile DNS data and mangled signatures: pyspf, dkimpy and ARC under hypothesis.

The records come from a stub resolver (the parsers of DNS data are under test here, not the
transport; the real server is exercised by the other test modules). Every outcome must be
one of the RFC result words, never an exception.
"""

from __future__ import annotations

import asyncio

import dkim
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.auth.arc import verify_arc
from lanalyze.mail.auth.dkim_verify import verify_dkim
from lanalyze.mail.auth.dns import Answer, Resolver
from lanalyze.mail.auth.spf import check_spf
from tests.mail.auth_world import keys, message

SPF_WORDS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}
DKIM_WORDS = {"pass", "fail", "policy", "neutral", "temperror", "permerror"}


class StubResolver(Resolver):
    """Answers every TXT query with ``txt`` and A/MX queries with ``other``."""

    def __init__(self, txt: list[bytes], other: Answer) -> None:
        super().__init__(None, 1.0)
        self.txt = txt
        self.other = other
        self.queries = 0

    async def query(self, name: str, rdtype: str) -> Answer:
        self.queries += 1
        if rdtype == "TXT":
            return Answer("ok", tuple(self.txt)) if self.txt else Answer("nxdomain")
        return self.other


spf_terms = st.sampled_from(
    [
        "v=spf1",
        "-all",
        "~all",
        "?all",
        "+all",
        "a",
        "mx",
        "ptr",
        "a:%{d}",
        "include:x.test",
        "include:%{l}.%{d}",
        "exists:%{i}.x.test",
        "redirect=x.test",
        "exp=%{z}",
        "ip4:192.0.2.0/24",
        "ip4:1.2.3.4/99",
        "ip6:::1/129",
        "a/24//64",
        "%{ir}.%{v}._spf",
        "%",
        "=",
    ]
)
spf_records = st.lists(spf_terms, max_size=8).map(lambda t: " ".join(["v=spf1", *t]).encode())
other_answers = st.sampled_from(
    [
        Answer("ok", ("192.0.2.1",)),
        Answer("ok", ((10, "mx.x.test"),)),
        Answer("nxdomain"),
        Answer("nodata"),
        Answer("error", error="timeout"),
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(spf_records | st.binary(max_size=40), max_size=3), other_answers, st.text(max_size=20)
)
def test_fuzz_spf_records(txt: list[bytes], other: Answer, local: str) -> None:
    resolver = StubResolver(txt, other)
    result = asyncio.run(
        check_spf(resolver, client_ip="192.0.2.1", mail_from=f"{local}@x.test", helo="h.test")
    )
    assert result.result in SPF_WORDS
    assert resolver.queries <= 200


def signed() -> bytes:
    msg = message()
    return dkim.sign(msg, b"rsa", b"signed.test", keys()["rsa"].private) + msg


key_records = st.sampled_from(
    [
        b"v=DKIM1; k=rsa; p=" + keys()["rsa"].public_b64.encode(),
        b"v=DKIM1; k=ed25519; p=" + keys()["ed"].public_b64.encode(),
        b"v=DKIM1; p=",
        b"v=DKIM1; k=rsa; p=AAAA",
        b"v=DKIM1; k=ed25519; p=AAAA",
        b"k=foo; p=x",
        b"v=DKIM2",
        b";;;",
        b"v=DKIM1; s=tlsrpt; p=" + keys()["rsa"].public_b64.encode(),
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(key_records | st.binary(max_size=60), max_size=2),
    st.integers(min_value=0, max_value=2000),
    st.binary(min_size=1, max_size=4),
)
def test_fuzz_dkim_keys_and_mangled_signatures(
    txt: list[bytes], position: int, junk: bytes
) -> None:
    msg = signed()
    position %= len(msg)
    mangled = msg[:position] + junk + msg[position + len(junk) :]
    for candidate in (msg, mangled):
        results = asyncio.run(verify_dkim(StubResolver(txt, Answer("nxdomain")), candidate))
        assert all(r.result in DKIM_WORDS for r in results)
        arc = asyncio.run(verify_arc(StubResolver(txt, Answer("nxdomain")), candidate))
        assert arc.result in {"pass", "fail", "none"}


def test_pathological_folding_is_not_handed_to_dkimpy() -> None:
    # dkimpy's parser is quadratic in a field's continuation lines (seconds for this one).
    lines = b"".join(b" " + b"b" * 48 + b"\r\n" for _ in range(40_000))
    msg = b"X-Padding: a\r\n" + lines + signed()
    results = asyncio.run(verify_dkim(StubResolver([], Answer("nxdomain")), msg))
    assert [(r.result, r.reason) for r in results] == [
        ("permerror", "header folded too often to verify safely")
    ]
    sealed = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA\r\n" + msg
    arc = asyncio.run(verify_arc(StubResolver([], Answer("nxdomain")), sealed))
    assert arc.result == "fail" and "folded" in arc.reason
