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
from typing import Any

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.mail.auth import dkim_verify
from lanalyze.mail.auth.dns import Answer, AnswerCache, Resolver, answer_bytes, consulted
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
    cache = AnswerCache(max_entries=3, max_bytes=10_000)
    cache.put(("a.test", "TXT"), answer, expires=100.0)
    assert cache.get(("a.test", "TXT"), now=99.0) == (answer, 100.0)
    assert cache.get(("a.test", "TXT"), now=100.0) is None  # the TTL has run out
    assert len(cache) == 0 and cache.bytes == 0
    for name in ("a", "b", "c", "d"):
        cache.put((f"{name}.test", "TXT"), answer, expires=100.0)
    assert len(cache) == 3 and cache.get(("a.test", "TXT"), now=0) is None  # oldest gone
    big = Answer("ok", (b"x" * 3000,))
    one = answer_bytes(("big0.test", "TXT"), big)
    cache = AnswerCache(max_entries=1000, max_bytes=3 * one)
    for number in range(10):
        cache.put((f"big{number}.test", "TXT"), big, expires=100.0)
        assert cache.bytes <= 3 * one
    assert len(cache) == 3
    cache.put(("huge.test", "TXT"), Answer("ok", (b"x" * 20_000,)), expires=100.0)
    assert cache.get(("huge.test", "TXT"), now=0) is None  # larger than the whole budget
    cache.put(("err.test", "TXT"), Answer("error", error="timeout"), expires=100.0)
    assert cache.get(("err.test", "TXT"), now=0) is None  # DNS trouble is never kept


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
