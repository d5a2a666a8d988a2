"""Issue 19: the sender checks made cheap without changing a verdict.

The DNS answer cache (entries and bytes bounded, TTLs honoured, one query for many sessions
asking at once), the key-record parse kept per record, and dkimpy's relaxed canonicalisation
skipping its regular expressions where they change nothing. The DNS tests ask a real Knot
server; the number of queries sent is counted by wrapping the resolver's one network call
(``Resolver._fetch``), which still runs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.auth import AuthConfig, Authenticator, dkim_verify
from lanalyze.mail.auth.dns import Answer, Resolver, TtlCache, answer_bytes, consulted
from lanalyze.mail.auth.message import _END_OF_HEADER, split_message
from lanalyze.metrics import REGISTRY
from tests.mail.auth_world import GOOD_IP, STRANGER_IP, zones
from tests.mail.dnsserver import KnotServer, knot_server

ZONE = {
    "speed.test": "\n".join(
        [
            '@ TXT "v=spf1 ip4:192.0.2.1 -all"',
            'big TXT "' + "x" * 200 + '"',
        ]
    )
}


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), ZONE) as server:
        yield server


class CountingResolver(Resolver):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, str]] = []

    async def _fetch(self, name: str, rdtype: str) -> tuple[Answer, float]:
        self.sent.append((name, rdtype))
        return await super()._fetch(name, rdtype)


def test_cached_answer_is_the_servers_and_costs_no_query(dns_server: KnotServer) -> None:
    resolver = CountingResolver(dns_server.address, 2.0, cache_size=100)

    async def twice() -> tuple[Answer, Answer, Answer, Answer]:
        first = await resolver.query("speed.test", "TXT")
        second = await resolver.query("speed.test", "TXT")
        missing = await resolver.query("nothere.speed.test", "TXT")
        again = await resolver.query("nothere.speed.test", "TXT")
        return first, second, missing, again

    first, second, missing, again = asyncio.run(twice())
    assert first == second == Answer("ok", (b"v=spf1 ip4:192.0.2.1 -all",))
    # NXDOMAIN is kept too, for the zone's negative TTL (RFC 2308 §5).
    assert missing == again == Answer("nxdomain")
    assert resolver.sent == [("speed.test", "TXT"), ("nothere.speed.test", "TXT")]


def test_no_cache_asks_every_time_and_concurrent_askers_share_one_query(
    dns_server: KnotServer,
) -> None:
    resolver = CountingResolver(dns_server.address, 2.0, cache_size=0)

    async def many() -> list[Answer]:
        return list(await asyncio.gather(*(resolver.query("speed.test", "TXT") for _ in range(20))))

    answers = asyncio.run(many())
    assert len(set(answers)) == 1 and answers[0].status == "ok"
    assert resolver.sent == [("speed.test", "TXT")]  # 20 sessions at once: one query
    asyncio.run(resolver.query("speed.test", "TXT"))
    assert len(resolver.sent) == 2  # nothing kept with dns_cache_size = 0


def test_consulted_names_what_the_work_relied_on(dns_server: KnotServer) -> None:
    resolver = Resolver(dns_server.address, 2.0, cache_size=100)

    async def work() -> list[tuple[Answer, float]]:
        with consulted() as found:
            await asyncio.gather(resolver.query("speed.test", "TXT"))
            await resolver.query("big.speed.test", "TXT")
        await resolver.query("other.speed.test", "TXT")  # after the block: not collected
        return found

    found = asyncio.run(work())
    assert [answer.status for answer, _ in found] == ["ok", "ok"]
    assert all(expires > 0 for _, expires in found)


def test_answer_cache_expires_and_is_bounded_in_entries_and_bytes() -> None:
    answer = Answer("ok", (b"v=spf1 -all",))
    size = answer_bytes(("a.test", "TXT"), answer)
    cache: TtlCache[tuple[str, str], Answer] = TtlCache(max_entries=3, max_bytes=10_000)
    cache.put(("a.test", "TXT"), answer, 100.0, size)
    assert cache.get(("a.test", "TXT"), now=99.0) == (answer, 100.0)
    assert cache.get(("a.test", "TXT"), now=100.0) is None  # the TTL has run out
    assert len(cache) == 0 and cache.bytes == 0
    for name in ("a", "b", "c", "d"):
        cache.put((f"{name}.test", "TXT"), answer, 100.0, size)
    assert len(cache) == 3 and cache.get(("a.test", "TXT"), now=0) is None  # oldest gone
    big = Answer("ok", (b"x" * 3000,))
    one = answer_bytes(("big0.test", "TXT"), big)
    assert one > 3000
    cache = TtlCache(max_entries=1000, max_bytes=3 * one)
    for number in range(10):
        key = (f"big{number}.test", "TXT")
        cache.put(key, big, 100.0, answer_bytes(key, big))
        assert cache.bytes <= 3 * one
    assert len(cache) == 3
    huge = Answer("ok", (b"x" * 20_000,))
    cache.put(("huge.test", "TXT"), huge, 100.0, answer_bytes(("huge.test", "TXT"), huge))
    assert cache.get(("huge.test", "TXT"), now=0) is None  # larger than the whole budget


def test_dns_trouble_is_never_kept(tmp_path: Path) -> None:
    with knot_server(tmp_path / "knot", {"broken.test": None}) as server:
        resolver = CountingResolver(server.address, 2.0, cache_size=100)

        async def twice() -> list[Answer]:
            return [await resolver.query("broken.test", "TXT") for _ in range(2)]

        answers = asyncio.run(twice())
    assert [a.status for a in answers] == ["error", "error"]
    assert len(resolver.sent) == 2


whitespace = st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"b", b"\r", b"\n"]))


@settings(max_examples=200, deadline=None)
@given(whitespace)
def test_relaxed_canonicalisation_fast_path_changes_nothing(parts: list[bytes]) -> None:
    text = b"".join(parts)
    assert dkim_verify._compress_whitespace(text) == re.sub(b"[\t ]+", b" ", text)
    assert dkim_verify._strip_trailing_whitespace(text) == re.sub(b"[\t ]+\r\n", b"\r\n", text)


def test_a_key_record_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.mail.auth_world import keys

    record = keys()["other"].txt_record.encode()
    calls: list[bytes] = []
    original = dkim_verify._dkimpy_evaluate_pk

    def counting(name: Any, text: Any) -> Any:
        calls.append(text)
        return original(name, text)

    monkeypatch.setattr(dkim_verify, "_dkimpy_evaluate_pk", counting)
    dkim_verify._parsed_key.cache_clear()
    expected = original(b"x", record)
    for _ in range(5):
        assert dkim.evaluate_pk(b"sel._domainkey.speed.test", record) == expected
        assert dkim_verify.key_refusal(record) is None
    assert calls == [record]
    # A broken record is not kept and dkimpy's error still names the key.
    with pytest.raises(dkim.KeyFormatError):
        dkim.evaluate_pk(b"sel._domainkey.speed.test", b"v=DKIM1; k=rsa; p=!!!")
    with pytest.raises(dkim.KeyFormatError, match=r"sel\._domainkey"):
        dkim.evaluate_pk(b"sel._domainkey.speed.test", b"")
    dkim_verify._parsed_key.cache_clear()


def test_large_key_records_are_not_kept() -> None:
    dkim_verify._parsed_key.cache_clear()
    huge = b"v=DKIM1; k=rsa; n=" + b"x" * dkim_verify.KEY_CACHE_RECORD_MAX + b"; p=AAAA"
    with pytest.raises(dkim.KeyFormatError):
        dkim.evaluate_pk(b"k", huge)
    assert dkim_verify._parsed_key.cache_info().currsize == 0


def _spf_of(auth: Authenticator, mail_from: str, ip: str = GOOD_IP) -> tuple[str, str, str]:
    msg = f"From: {mail_from}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    verdict = asyncio.run(
        auth.check_bytes(msg, mail_from=mail_from, helo="client.test", client_ip=ip, rcpt_to=[])
    )
    details = verdict.details["spf"]
    return verdict.spf, details["explanation"], details["domain"]


def _cached() -> float:
    return REGISTRY.get_sample_value("lanalyze_mail_auth_spf_cached_total") or 0.0


@pytest.fixture(scope="module")
def world_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("world"), zones()) as server:
        yield server


def test_spf_result_kept_per_domain_and_client(world_dns: KnotServer) -> None:
    auth = Authenticator(AuthConfig(resolver=world_dns.address), "mx.local.example")
    fresh = Authenticator(
        AuthConfig(resolver=world_dns.address, dns_cache_size=0), "mx.local.example"
    )
    before = _cached()
    first = _spf_of(auth, "alice@signed.test")
    assert _cached() == before
    # Another local part of the same domain from the same client: no macro in the records,
    # so the result is the same, answered without evaluating or asking DNS.
    assert _spf_of(auth, "carol@signed.test") == first == _spf_of(fresh, "carol@signed.test")
    assert _cached() == before + 1
    # Another client address is another question.
    assert _spf_of(auth, "carol@signed.test", STRANGER_IP)[0] == "fail"
    assert _cached() == before + 1
    # Without a DNS cache nothing is kept either (dns_cache_size = 0 asks every time).
    _spf_of(fresh, "carol@signed.test")
    assert _cached() == before + 1


def test_spf_records_with_macros_are_kept_per_sender(world_dns: KnotServer) -> None:
    """exists:%{l}.allowed.spf.test: the local part decides; a per-domain entry would let
    alice ride on bob's pass."""
    auth = Authenticator(AuthConfig(resolver=world_dns.address), "mx.local.example")
    assert _spf_of(auth, "bob@macro.spf.test")[0] == "pass"
    assert _spf_of(auth, "alice@macro.spf.test")[0] == "fail"
    before = _cached()
    assert _spf_of(auth, "bob@macro.spf.test")[0] == "pass"
    assert _cached() == before + 1


def test_spf_temperror_is_not_kept(world_dns: KnotServer) -> None:
    auth = Authenticator(
        AuthConfig(resolver=world_dns.address, dns_timeout=1.0), "mx.local.example"
    )
    before = _cached()
    assert _spf_of(auth, "a@tempinc.spf.test")[0] == "temperror"
    assert _spf_of(auth, "a@tempinc.spf.test")[0] == "temperror"
    assert _cached() == before


def _split_by_regex(message: bytes) -> tuple[bytes, bytes]:
    """split_message as it was: the regular expression over the whole message."""
    if message.startswith((b"\r\n", b"\n")):
        return b"", message[2 if message.startswith(b"\r\n") else 1 :]
    match = _END_OF_HEADER.search(message)
    if match is None:
        return message, b""
    end_of_last_line = match.start() + (2 if message[match.start()] == 0x0D else 1)
    return message[:end_of_last_line], message[match.end() :]


message_parts = st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b"From: a@b.test", b"X-A: 1", b" folded", b"\t", b"x"]),
    max_size=30,
)


def _parsed(message: bytes) -> object:
    try:
        return dkim_verify._rfc822_parse(message)
    except Exception as exc:  # dkimpy raises IndexError too: the same one either way
        return (type(exc).__name__, str(exc))


def _parsed_by_dkimpy(message: bytes) -> object:
    try:
        return dkim_verify._dkimpy_rfc822_parse(message)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=300, deadline=None)
@given(message_parts)
def test_message_splitting_fast_paths_change_nothing(parts: list[bytes]) -> None:
    message = b"".join(parts)
    assert split_message(message) == _split_by_regex(message)
    assert _parsed(message) == _parsed_by_dkimpy(message)
    assert dkim_verify._unfold_header_value(message) == re.sub(b"\r?\n", b"", message)


signature_values = st.lists(
    st.sampled_from(
        [b";", b" ", b"\t", b"\r", b"\n", b"\r\n", b"b", b"=", b"a", b"Z9+/", b"-", b" b=", b";b="]
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(signature_values)
def test_signature_b_tag_removal_is_dkimpys(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert dkim.RE_BTAG.sub(b"\\1", value) == dkim_verify._DKIMPY_RE_BTAG.sub(b"\\1", value)
